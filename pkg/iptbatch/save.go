package iptbatch

import (
	"slices"
	"strings"
)

// Saved is a table as iptables-save printed it.
type Saved struct {
	Chains []string // declared chains, in order
	Rules  []string // "-A CHAIN ..." lines, verbatim
	// Indexes of the above: a restore of thousands of attachments asks
	// about each one's chains and rules, and a scan of every line each
	// time made it quadratic.
	to       map[chainTarget][]string
	in       map[string][]string // rules by chain
	rules    map[string]bool
	declared map[string]bool
}

type chainTarget struct{ chain, target string }

// ParseSave reads the output of `iptables-save -t TABLE`.
func ParseSave(text string) Saved {
	var s Saved
	for _, line := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			s.Chains = append(s.Chains, name)
			if s.declared == nil {
				s.declared = map[string]bool{}
			}
			s.declared[name] = true
		case strings.HasPrefix(line, "-A "):
			s.Rules = append(s.Rules, line)
			if s.to == nil {
				s.to, s.in, s.rules = map[chainTarget][]string{}, map[string][]string{}, map[string]bool{}
			}
			s.rules[line] = true
			chain, _, _ := strings.Cut(line[3:], " ")
			s.in[chain] = append(s.in[chain], line)
			k := chainTarget{chain, target(line)}
			s.to[k] = append(s.to[k], line)
		}
	}
	return s
}

// HasChain reports whether chain is declared.
func (s Saved) HasChain(chain string) bool { return s.declared[chain] }

// HasRule reports whether "-A chain rule" is among the rules, as printed.
func (s Saved) HasRule(chain string, rule Rule) bool {
	return s.rules["-A "+chain+" "+rule.String()]
}

// RulesTo returns the rules of chain that jump to target, as printed: how
// rules are told apart whose matches iptables-save may print in an order
// or a form of its own (a user's conditions), when the target is a chain
// only their owner jumps to.
func (s Saved) RulesTo(chain, to string) []string {
	return s.to[chainTarget{chain, to}]
}

// Comments returns the comments of chain's rules, as iptables-save quoted
// them, unquoted, in order.
func (s Saved) Comments(chain string) []string {
	var out []string
	for _, line := range s.in[chain] {
		args := Split(line)
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "--comment" {
				out = append(out, args[i+1])
			}
		}
	}
	return out
}

// Split splits a line as iptables-save prints it (and iptables-restore
// reads it) into arguments: words apart from spaces, or text in double
// quotes in which \" and \\ stand for " and \.
func Split(line string) []string {
	var args []string
	var arg strings.Builder
	inArg, quoted := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quoted && c == '\\' && i+1 < len(line) && (line[i+1] == '"' || line[i+1] == '\\'):
			i++
			arg.WriteByte(line[i])
		case c == '"':
			quoted, inArg = !quoted, true
		case !quoted && (c == ' ' || c == '\t'):
			if inArg {
				args = append(args, arg.String())
				arg.Reset()
				inArg = false
			}
		default:
			arg.WriteByte(c)
			inArg = true
		}
	}
	if inArg {
		args = append(args, arg.String())
	}
	return args
}

// target returns the chain or target a saved rule jumps to.
func target(line string) string {
	fields := strings.Fields(line)
	for i := len(fields) - 2; i >= 0; i-- {
		if fields[i] == "-j" || fields[i] == "-g" {
			return fields[i+1]
		}
	}
	return ""
}

// Removal is the batch that removes chains from the saved table: every
// rule that jumps to one of them (as printed, so it matches exactly), then
// the chains themselves. Chains that are not there are skipped, so the
// batch applies whatever part of them a crash or a reboot left.
func (s Saved) Removal(table string, chains []string) *Batch {
	b := NewBatch(table)
	for _, line := range s.Rules {
		if slices.Contains(chains, target(line)) {
			b.Raw("-D" + strings.TrimPrefix(line, "-A"))
		}
	}
	for _, c := range chains {
		if s.HasChain(c) {
			b.RemoveChain(c)
		}
	}
	return b
}
