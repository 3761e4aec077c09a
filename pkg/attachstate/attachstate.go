// Package attachstate keeps small per-attachment records on disk, so that
// DEL and GC can undo exactly what an ADD did even when the request no
// longer carries what the ADD was given (no prevResult, no portMappings),
// or the plugin that did the ADD crashed.
//
// A record is one JSON file, written to a temporary name and renamed into
// place, so a reader sees the old record or the new one, never half of one.
package attachstate

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"
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
type Store struct{ Dir string }

// Save writes v as the record called name, replacing any earlier one.
func (s Store) Save(name string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(s.Dir, ".tmp-"+name+"-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename this is a no-op
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(s.Dir, name))
}

// Load reads the record called name into v; found is false when there is none.
func (s Store) Load(name string, v any) (found bool, err error) {
	data, err := os.ReadFile(filepath.Join(s.Dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return false, fmt.Errorf("state record %s: %w", filepath.Join(s.Dir, name), err)
	}
	return true, nil
}

// Delete removes the record called name; a missing record is not an error.
func (s Store) Delete(name string) error {
	err := os.Remove(filepath.Join(s.Dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// Lock takes the lock called name (a dot file beside the records, so never
// a record itself), exclusive or shared, waiting for it; unlock releases it.
func (s Store) Lock(name string, exclusive bool) (unlock func(), err error) {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(s.Dir, "."+name+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	if err := unix.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// HoldAgainstRestore is taken shared by the verbs that change a plugin's
// state (ADD, DEL, GC) and exclusively by its restore, so that a restore
// never puts back what a DEL is taking away, nor races an ADD.
func (s Store) HoldAgainstRestore(restore bool) (unlock func(), err error) {
	return s.Lock("restore", restore)
}

// Restoring is how a restore starts: it takes the lock ADD, DEL and GC
// share exclusively and lists the records; unlock releases the lock.
func (s Store) Restoring() (names []string, unlock func(), err error) {
	unlock, err = s.HoldAgainstRestore(true)
	if err != nil {
		return nil, nil, err
	}
	if names, err = s.Names(); err != nil {
		unlock()
		return nil, nil, err
	}
	return names, unlock, nil
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
