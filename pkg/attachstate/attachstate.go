// Package attachstate keeps small per-attachment records on disk, so that
// DEL and GC can undo exactly what an ADD did even when the request no
// longer carries what the ADD was given (no prevResult, no portMappings),
// or the plugin that did the ADD crashed.
//
// A record is one JSON file, written to a temporary name, synced and
// renamed into place, so a reader sees the old record or the new one,
// never half of one, also after a crash.
package attachstate

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"

	"github.com/cnichain/plugins/pkg/atomicfile"
)

// Key names one attachment: a container's interface on a network.
type Key struct {
	Network     string `json:"network"`
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// ID is a short, fixed-length, filesystem- and iptables-safe digest of the
// key. The fields are joined with NUL, which none of them may contain, so
// distinct keys never collide by concatenation.
func (k Key) ID() string {
	sum := sha256.Sum256([]byte(k.Network + "\x00" + k.ContainerID + "\x00" + k.IfName))
	return hex.EncodeToString(sum[:])
}

// IsKeyID reports whether name has the form of a Key's ID, which tells an
// attachment's record from other files a directory shared by several
// plugins may hold (macvlan-host-route's route-<IP>, say).
func IsKeyID(name string) bool {
	if len(name) != sha256.Size*2 {
		return false
	}
	_, err := hex.DecodeString(name)
	return err == nil && strings.ToLower(name) == name
}

// In reports whether k is one of the attachments a GC request names as valid.
func (k Key) In(valid []types.GCAttachment) bool {
	for _, v := range valid {
		if v.ContainerID == k.ContainerID && v.IfName == k.IfName {
			return true
		}
	}
	return false
}

// Store is a directory of records.
type Store struct {
	Dir string
	// Durable records are synced to disk before Save returns: a record of
	// what outlives the machine (an allocation a resource manager keeps)
	// must survive a power cut. Records of kernel state need not: a crash
	// of the machine takes that state too, and a crash of the process
	// leaves what was written in the page cache. Unsynced, a record costs
	// no disk flush (about 1 ms of an ADD here, far more on a busy disk); a
	// power cut may leave one empty, which Load moves aside as torn.
	Durable bool
}

// Save writes v as the record called name, replacing any earlier one
// whole (written beside it and renamed over it), and synced when the store
// is Durable.
func (s Store) Save(name string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := s.ensureDir(); err != nil {
		return err
	}
	write := atomicfile.WriteUnsynced
	if s.Durable {
		write = atomicfile.Write
	}
	return write(filepath.Join(s.Dir, name), data, 0o600)
}

// TornError is a record that could not be decoded (a disk that lost part
// of it, a hand edit): Load moved it aside, out of every later verb's way,
// and the caller falls back to what the attachment's key alone names.
type TornError struct {
	Path, MovedTo string
	Err           error
}

func (e *TornError) Error() string {
	return fmt.Sprintf("state record %s cannot be read (%v); moved aside to %s", e.Path, e.Err, e.MovedTo)
}

// Load reads the record called name into v; found is false when there is
// none. A record that cannot be decoded is moved aside to .torn-<name> (a
// dot file, which Names does not list, so GC and restore pass it by) and
// reported as a *TornError with found false, now and by every later Load
// of name until Delete: the verbs of that attachment fall back to what its
// key alone names.
func (s Store) Load(name string, v any) (found bool, err error) {
	path := filepath.Join(s.Dir, name)
	aside := filepath.Join(s.Dir, ".torn-"+name)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat(aside); serr == nil {
			return false, &TornError{Path: path, MovedTo: aside, Err: errors.New("torn earlier")}
		}
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := json.Unmarshal(data, v); err != nil {
		if rerr := os.Rename(path, aside); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			return false, fmt.Errorf("state record %s cannot be read (%v) nor moved aside: %w", path, err, rerr)
		}
		return false, &TornError{Path: path, MovedTo: aside, Err: err}
	}
	return true, nil
}

// IsTorn reports whether err is a record Load moved aside.
func IsTorn(err error) bool {
	var torn *TornError
	return errors.As(err, &torn)
}

// Delete removes the record called name, and what Load moved aside of
// it; a missing record is not an error.
func (s Store) Delete(name string) error {
	var errs []error
	for _, path := range []string{filepath.Join(s.Dir, name), filepath.Join(s.Dir, ".torn-"+name)} {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ensureDir creates the store's directory, and refuses one that is a
// symbolic link or that others than its owner may write to: either would
// let someone else redirect or forge the records DEL and GC act on.
func (s Store) ensureDir() error {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return err
	}
	info, err := os.Lstat(s.Dir)
	if err != nil {
		return err
	}
	if info.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("stateDir %s is a symbolic link: refusing it, records must stay where they were written", s.Dir)
	}
	if info.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("stateDir %s is writable by group or others (mode %v): refusing it, its records decide what DEL removes", s.Dir, info.Mode().Perm())
	}
	return nil
}

// lock takes the lock called name (a dot file beside the records, so
// never a record itself), shared or exclusive (unix.LOCK_SH, LOCK_EX),
// waiting for it; unlock releases it.
func (s Store) lock(name string, how int) (unlock func(), err error) {
	if err := s.ensureDir(); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(s.Dir, "."+name+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// HoldAgainstRestore is taken (shared) by the verbs that change a plugin's
// state, ADD, DEL and GC, which may run side by side; Restoring takes it
// exclusively, so that a restore never puts back what a DEL is taking
// away, nor races an ADD.
func (s Store) HoldAgainstRestore() (unlock func(), err error) {
	return s.lock("restore", unix.LOCK_SH)
}

// Quiet waits until no ADD, DEL or GC holds the store (HoldAgainstRestore)
// and keeps new ones waiting until unlock: what the records say then is
// settled, not half of a verb's work.
func (s Store) Quiet() (unlock func(), err error) {
	return s.lock("restore", unix.LOCK_EX)
}

// Live is what a restore needs to know of a record: the netns of its pod
// ("" when it names none), and how to name it in what the restore says.
type Live interface {
	PodNetns() string
	Describe(name string) string
}

// Loaded is a record a restore works from, and its name.
type Loaded[R any] struct {
	Name string
	Rec  R
}

// Restoring is how a restore starts: it takes the lock ADD, DEL and GC
// share, exclusively, and loads the records whose names match. Those of
// pods that are gone (their netns no longer exists: GC removes them) and
// torn ones are said on out and left out. unlock releases the lock.
func Restoring[T any, R interface {
	*T
	Live
}](s Store, out io.Writer, match func(name string) bool) (recs []Loaded[R], unlock func(), err error) {
	unlock, err = s.Quiet()
	if err != nil {
		return nil, nil, err
	}
	if recs, err = LoadLive[T, R](s, out, match); err != nil {
		unlock()
		return nil, nil, err
	}
	return recs, unlock, nil
}

// LoadLive is Restoring's loading, for a restore that holds the lock
// already and has records of another kind to load too.
func LoadLive[T any, R interface {
	*T
	Live
}](s Store, out io.Writer, match func(name string) bool) (recs []Loaded[R], err error) {
	names, err := s.Names()
	if err != nil {
		return nil, err
	}
	names = slices.DeleteFunc(names, func(name string) bool { return !match(name) })
	// Decoding is most of a restore's own work on a node of thousands of
	// attachments: it is spread over the CPUs, the records kept in order.
	type loaded struct {
		rec   R
		found bool
		err   error
		gone  bool
	}
	all := make([]loaded, len(names))
	var wg sync.WaitGroup
	workers := min(runtime.GOMAXPROCS(0), len(names))
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(names); i += workers {
				l := &all[i]
				l.rec = R(new(T))
				l.found, l.err = s.Load(names[i], l.rec)
				l.gone = l.err == nil && l.found && NetnsGone(l.rec.PodNetns())
			}
		})
	}
	wg.Wait()
	for i, l := range all {
		if IsTorn(l.err) {
			fmt.Fprintf(out, "not restored: %v\n", l.err)
		}
		if l.err != nil || !l.found {
			continue // deleted meanwhile, or unreadable: nothing to restore from
		}
		if l.gone {
			fmt.Fprintf(out, "skipped %s: its netns %s is gone; GC removes it\n", l.rec.Describe(names[i]), l.rec.PodNetns())
			continue
		}
		recs = append(recs, Loaded[R]{names[i], l.rec})
	}
	return recs, nil
}

// NetnsGone reports whether the netns a record names (if it names one) no
// longer exists: its pod is gone, and a restore has nothing to restore.
func NetnsGone(netns string) bool {
	if netns == "" {
		return false
	}
	_, err := os.Stat(netns)
	return errors.Is(err, fs.ErrNotExist)
}

// Names lists the records. Dot files are not records: half-written
// temporaries, and locks a plugin keeps beside its records. A missing
// directory holds no records.
func (s Store) Names() ([]string, error) {
	entries, err := os.ReadDir(s.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if !e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			names = append(names, e.Name())
		}
	}
	return names, nil
}
