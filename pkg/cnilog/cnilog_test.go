package cnilog

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "plugin.log")
	log, closeLog := Config{LogFile: path, LogLevel: "warn"}.Open("network", "n1", "containerID", "c1", "verb", "ADD")
	log.Info("hidden below warn")
	log.Warn("route missing", "ip", "10.0.0.7")
	closeLog()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got := string(data)
	if strings.Contains(got, "hidden") || !strings.Contains(got, `msg="route missing" network=n1 containerID=c1 verb=ADD ip=10.0.0.7`) {
		t.Fatalf("log = %q", got)
	}
	// No file: nothing, and no error either when the file cannot be opened.
	log, closeLog = Config{}.Open()
	log.Error("nowhere")
	closeLog()
	log, closeLog = Config{LogFile: "/nonexistent/dir/x.log"}.Open()
	log.Error("nowhere")
	closeLog()
}

func TestValidate(t *testing.T) {
	for _, lvl := range []string{"", "debug", "INFO", "warn", "error"} {
		if err := (Config{LogLevel: lvl}).Validate(); err != nil {
			t.Errorf("Validate(%q) = %v", lvl, err)
		}
	}
	if err := (Config{LogLevel: "loud"}).Validate(); err == nil || !strings.Contains(err.Error(), `logLevel "loud"`) {
		t.Errorf("Validate(loud) = %v", err)
	}
}
