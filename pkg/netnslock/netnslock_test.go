package netnslock

import (
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestExclusive: holders of one name never overlap, other names are free,
// and a waiter gives up after its wait naming the lock.
func TestExclusive(t *testing.T) {
	var mu sync.Mutex
	inside, most := 0, 0
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			release, err := Acquire("test-exclusive")
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			inside++
			most = max(most, inside)
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
			mu.Lock()
			inside--
			mu.Unlock()
			release()
		}()
	}
	wg.Wait()
	if most != 1 {
		t.Fatalf("%d holders at once", most)
	}
	release, err := Acquire("test-held")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	other, err := acquire("test-other", time.Second)
	if err != nil {
		t.Fatalf("another name: %v", err)
	}
	other()
	if _, err := acquire("test-held", 50*time.Millisecond); err == nil || !strings.Contains(err.Error(), "test-held") {
		t.Fatalf("a held lock = %v, want an error naming it", err)
	}
}

// TestFreedWhenTheHolderDies: a process killed while holding the lock
// does not keep it.
func TestFreedWhenTheHolderDies(t *testing.T) {
	if os.Getenv("NETNSLOCK_HOLD") != "" {
		if _, err := Acquire("test-dies"); err != nil {
			os.Exit(1)
		}
		os.Stdout.WriteString("held\n")
		time.Sleep(time.Minute)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestFreedWhenTheHolderDies$")
	cmd.Env = append(os.Environ(), "NETNSLOCK_HOLD=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := out.Read(buf); err != nil || string(buf) != "held\n" {
		t.Fatalf("the holder did not take the lock: %q, %v", buf, err)
	}
	if _, err := acquire("test-dies", 50*time.Millisecond); err == nil {
		t.Fatal("the lock was free while another process held it")
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	release, err := acquire("test-dies", 10*time.Second)
	if err != nil {
		t.Fatalf("after the holder was killed: %v", err)
	}
	release()
}
