// Package iptbatch writes iptables rules in batches: a whole attachment's
// rules go in with one `iptables-restore --noflush --wait` per address
// family, atomically, instead of one iptables process per rule.
//
// Arguments are quoted for iptables-restore's tokenizer, and characters that
// end a line are never written, so a value (a container ID in a comment, a
// user's condition) can never start a rule of its own.
package iptbatch

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// Family is an address family, with its own iptables binaries.
type Family int

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	if f == IPv6 {
		return "IPv6"
	}
	return "IPv4"
}

// Runner runs the iptables binaries of one flavour: "" for the system's
// default (iptables-restore), or "legacy" / "nft" for iptables-legacy-restore
// and iptables-nft-restore.
type Runner struct {
	Flavour string
}

func (r Runner) binary(f Family, verb string) string {
	return r.tool(f) + "-" + verb
}

// tool is the name of r's iptables binary of f itself.
func (r Runner) tool(f Family) string {
	name := "iptables"
	if f == IPv6 {
		name = "ip6tables"
	}
	if r.Flavour != "" {
		name += "-" + r.Flavour
	}
	return name
}

// root, when set, is a directory holding the node's root file system: the
// iptables binaries are found in it and run chrooted into it, with its
// libraries and its xtables lock. A process in a container that has no
// iptables of its own (the agent in the installer image) sets it once,
// with SetRoot, before running any.
var root string

// SetRoot makes every Runner of this process run the iptables binaries of
// the root file system at dir (see root).
func SetRoot(dir string) { root = dir }

// command is the iptables binary name with args: the one in PATH, or the
// one in root's sbin and bin directories, run chrooted into root.
func command(name string, args ...string) *exec.Cmd {
	if root == "" {
		return exec.Command(name, args...)
	}
	path, err := lookInRoot(root, name)
	if err != nil {
		cmd := exec.Command(name, args...)
		cmd.Err = err
		return cmd
	}
	return &exec.Cmd{Path: path, Args: append([]string{path}, args...), Dir: "/",
		SysProcAttr: &syscall.SysProcAttr{Chroot: root}}
}

// binDirs are where a node keeps its iptables binaries.
var binDirs = []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"}

// lookInRoot finds the program name in root's sbin and bin directories and
// returns its path as a process chrooted into root sees it. Symbolic links
// are followed inside root, as that process follows them: on Debian,
// Ubuntu, RHEL and Fedora /usr/sbin/iptables-save is a link to
// /etc/alternatives/iptables-save, an absolute path that, resolved from a
// container's own root, names nothing (or something else).
func lookInRoot(root, name string) (string, error) {
	for _, bin := range binDirs {
		path := filepath.Join(bin, name)
		real, err := ResolveInRoot(root, path)
		if err != nil {
			continue
		}
		if info, err := os.Stat(real); err == nil && info.Mode().IsRegular() && info.Mode().Perm()&0o111 != 0 {
			return path, nil
		}
	}
	return "", fmt.Errorf("%s not found in the sbin and bin directories of %s (symbolic links followed inside it)", name, root)
}

// maxLinks is how many symbolic links a resolution follows, as Linux's
// MAXSYMLINKS: more is a loop.
const maxLinks = 40

// ResolveInRoot returns the file that path names for a process chrooted
// into root, as a path outside it (under root): every symbolic link is
// followed inside root, an absolute target starting again at root, and
// ".." never climbs above it. openat2's RESOLVE_IN_ROOT would do the same,
// but not on the kernels before 5.6 that nodes still run (RHEL 8).
func ResolveInRoot(root, path string) (string, error) {
	pending := strings.Split(path, "/")
	resolved := "/"
	links := 0
	for len(pending) > 0 {
		part := pending[0]
		pending = pending[1:]
		switch part {
		case "", ".":
			continue
		case "..":
			resolved = filepath.Dir(resolved)
			continue
		}
		next := filepath.Join(resolved, part)
		info, err := os.Lstat(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if info.Mode()&os.ModeSymlink == 0 {
			resolved = next
			continue
		}
		if links++; links > maxLinks {
			return "", &os.PathError{Op: "resolve", Path: path, Err: syscall.ELOOP}
		}
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if filepath.IsAbs(target) {
			resolved = "/"
		}
		pending = append(strings.Split(target, "/"), pending...)
	}
	return filepath.Join(root, resolved), nil
}

// Restore applies text with --noflush (leave other rules alone) and --wait
// (queue behind other writers rather than fail). iptables-restore commits
// each table atomically: on error nothing of text is applied.
func (r Runner) Restore(f Family, text string) error {
	cmd := command(r.binary(f, "restore"), "--noflush", "--wait")
	cmd.Stdin = strings.NewReader(text)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", r.binary(f, "restore"), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// Save returns the rules of table as iptables-save prints them.
func (r Runner) Save(f Family, table string) (string, error) {
	cmd := command(r.binary(f, "save"), "-t", table)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s: %w: %s", r.binary(f, "save"), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// ListChain returns chain's rules as `iptables -S` prints them (its -N
// line first), and whether it exists: one process that lists only that
// chain (an iptables-save would print the whole table).
func (r Runner) ListChain(f Family, table, chain string) (rules []string, exists bool, err error) {
	cmd := command(r.tool(f), "--wait", "-t", table, "-S", chain)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return strings.Split(strings.TrimSpace(stdout.String()), "\n"), true, nil
	case errors.As(err, &exit) && exit.ExitCode() == 1 && strings.Contains(stderr.String(), "No chain"):
		return nil, false, nil
	}
	return nil, false, fmt.Errorf("%s -t %s -S %s: %w: %s", r.tool(f), table, chain, err, strings.TrimSpace(stderr.String()))
}

// Quote renders one argument for iptables-restore: bare when it is a plain
// word, else in double quotes with " and \ escaped. Line breaks and NULs,
// which would end the rule, become spaces.
func Quote(arg string) string {
	if arg != "" && !strings.ContainsAny(arg, " \t\"'\\#\n\r\x00") {
		return arg
	}
	return `"` + quoteEscaper.Replace(arg) + `"`
}

// quoteEscaper escapes for a double-quoted argument and blanks what would
// end the line.
var quoteEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", " ", "\r", " ", "\x00", " ")

// Rule is one rule's arguments, as given to iptables after the chain.
type Rule []string

// String renders the rule's arguments, quoted.
func (r Rule) String() string {
	q := make([]string, len(r))
	for i, a := range r {
		q[i] = Quote(a)
	}
	return strings.Join(q, " ")
}

// Batch is the text of one iptables-restore run for one table.
type Batch struct {
	table string
	lines []string
}

// NewBatch starts a batch for table (e.g. "nat").
func NewBatch(table string) *Batch { return &Batch{table: table} }

// DeclareChain creates chain, or flushes it if it exists.
func (b *Batch) DeclareChain(chain string) { b.lines = append(b.lines, ":"+chain+" - [0:0]") }

// Append adds rule at the end of chain.
func (b *Batch) Append(chain string, rule Rule) {
	b.lines = append(b.lines, "-A "+chain+" "+rule.String())
}

// Insert adds rule at the head of chain.
func (b *Batch) Insert(chain string, rule Rule) {
	b.lines = append(b.lines, "-I "+chain+" "+rule.String())
}

// Delete removes the first rule of chain matching rule.
func (b *Batch) Delete(chain string, rule Rule) {
	b.lines = append(b.lines, "-D "+chain+" "+rule.String())
}

// Check makes the batch fail, whole, unless chain holds rule: a
// precondition checked by the process that applies the rest (against the
// table as iptables-legacy holds it locked, or as iptables-nft read it).
func (b *Batch) Check(chain string, rule Rule) {
	b.lines = append(b.lines, "-C "+chain+" "+rule.String())
}

// Raw adds a line as iptables-save printed it (for deletions found by Save).
func (b *Batch) Raw(line string) { b.lines = append(b.lines, line) }

// RemoveChain flushes and deletes chain; its jumps must be gone first.
func (b *Batch) RemoveChain(chain string) { b.lines = append(b.lines, "-F "+chain, "-X "+chain) }

// Empty reports whether the batch would change nothing.
func (b *Batch) Empty() bool { return len(b.lines) == 0 }

// Text is the batch as iptables-restore reads it.
func (b *Batch) Text() string {
	return "*" + b.table + "\n" + strings.Join(b.lines, "\n") + "\nCOMMIT\n"
}
