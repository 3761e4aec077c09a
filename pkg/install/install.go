// Package install puts files into a node's directories the way a kubelet
// can never observe half done: each file is written beside its target
// under a temporary name, synced, then renamed over it. A rename replaces
// the directory entry, so a plugin running at that moment keeps its old
// binary, and the next run gets the new one whole. A file whose content and
// mode are already there is left alone, so a second run changes nothing.
package install

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/cnichain/plugins/pkg/atomicfile"
)

// Outcome says what File did to one target.
type Outcome string

const (
	Unchanged Outcome = "unchanged"
	Written   Outcome = "written"
)

// File makes dst hold data with mode, atomically, unless it already does.
func File(dst string, data []byte, mode fs.FileMode) (Outcome, error) {
	if old, err := os.ReadFile(dst); err == nil && bytes.Equal(old, data) {
		if info, err := os.Stat(dst); err == nil && info.Mode().Perm() == mode.Perm() {
			return Unchanged, nil
		}
	}
	if err := atomicfile.Write(dst, data, mode); err != nil {
		return "", err
	}
	return Written, nil
}

// Result is one file's outcome.
type Result struct {
	Path    string
	Outcome Outcome
}

// Dir installs every regular file of src into dst (created if missing)
// with mode, in name order.
func Dir(src, dst string, mode fs.FileMode) ([]Result, error) {
	names, err := regularFiles(src)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return nil, err
	}
	var out []Result
	for _, name := range names {
		target := filepath.Join(dst, name)
		o, err := installFile(filepath.Join(src, name), target, mode)
		if err != nil {
			return out, fmt.Errorf("install %s: %w", target, err)
		}
		out = append(out, Result{target, o})
	}
	return out, nil
}

// installFile is File for a source on disk: an installed file already the
// same is compared in blocks, not read whole (the installer runs within the
// DaemonSet's memory limit), and only a differing source is read to write.
func installFile(src, dst string, mode fs.FileMode) (Outcome, error) {
	same, err := sameFile(src, dst, mode)
	if err != nil {
		return "", err
	}
	if same {
		return Unchanged, nil
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return "", err
	}
	if err := atomicfile.Write(dst, data, mode); err != nil {
		return "", err
	}
	return Written, nil
}

// Differing lists the regular files of src whose copy in dst is missing or
// has other content or mode: what Dir would write. Empty means installed.
// It streams the files rather than reading them whole: it runs as the
// DaemonSet's readiness probe, inside the container's memory limit, beside
// the agent.
func Differing(src, dst string, mode fs.FileMode) ([]string, error) {
	names, err := regularFiles(src)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, name := range names {
		target := filepath.Join(dst, name)
		same, err := sameFile(filepath.Join(src, name), target, mode)
		if err != nil {
			return nil, err
		}
		if !same {
			out = append(out, target)
		}
	}
	return out, nil
}

// regularFiles names the regular files of dir, in name order (os.ReadDir's).
func regularFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// sameFile says whether installed holds want's content with mode; a
// missing installed file is not the same, a missing want is an error.
func sameFile(want, installed string, mode fs.FileMode) (bool, error) {
	w, err := os.Open(want)
	if err != nil {
		return false, err
	}
	defer w.Close()
	i, err := os.Open(installed)
	if err != nil {
		return false, nil
	}
	defer i.Close()
	wInfo, err := w.Stat()
	if err != nil {
		return false, err
	}
	iInfo, err := i.Stat()
	if err != nil || iInfo.Size() != wInfo.Size() || iInfo.Mode().Perm() != mode.Perm() {
		return false, nil
	}
	wBuf, iBuf := make([]byte, 64<<10), make([]byte, 64<<10)
	for {
		n, wErr := io.ReadFull(w, wBuf)
		m, iErr := io.ReadFull(i, iBuf)
		if n != m || !bytes.Equal(wBuf[:n], iBuf[:m]) {
			return false, nil
		}
		if wErr == io.EOF || wErr == io.ErrUnexpectedEOF {
			return iErr == wErr, nil
		}
		if wErr != nil {
			return false, wErr
		}
		if iErr != nil {
			return false, nil
		}
	}
}
