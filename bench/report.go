package bench

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// report collects rows, counts and checks, and renders them as Markdown.
type report struct {
	rows   []row
	notes  []string // free lines: exec counts, throughput
	checks []string // the targets, met or not
	// loopback is the median ADD of the loopback plugin: the floor of any
	// exec'd plugin, which some targets are relative to.
	loopback time.Duration
}

func (r *report) check(name string, ok bool, detail string) {
	mark := "met"
	if !ok {
		mark = "NOT met"
	}
	r.checks = append(r.checks, fmt.Sprintf("- %s: **%s** (%s)", name, mark, detail))
}

func (r *report) markdown(rounds int) string {
	var b strings.Builder
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "Run on %s: %s, %d CPUs, %s, %s; %d interleaved rounds per case, times in ms.\n\n",
		time.Now().UTC().Format("2006-01-02"), host, runtime.NumCPU(), kernel(), runtime.Version(), rounds)
	section := ""
	for _, row := range r.rows {
		if row.section != section {
			section = row.section
			fmt.Fprintf(&b, "\n### %s\n\n| case | ours median | ours p90 | reference median | reference p90 | ours / reference |\n|---|---:|---:|---:|---:|---:|\n", section)
		}
		ref := []string{"", "", ""}
		if row.ref != nil {
			ref = []string{ms(row.ref.median()), ms(row.ref.p90()), fmt.Sprintf("%.2f", row.ratio())}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", row.name, ms(row.ours.median()), ms(row.ours.p90()), ref[0], ref[1], ref[2])
	}
	if len(r.notes) > 0 {
		b.WriteString("\n### Processes and throughput\n\n")
		for _, n := range r.notes {
			b.WriteString(n + "\n")
		}
	}
	b.WriteString("\n### Targets\n\n")
	for _, c := range r.checks {
		b.WriteString(c + "\n")
	}
	return b.String()
}

func kernel() string {
	data, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "linux"
	}
	return "Linux " + strings.TrimSpace(string(data))
}

// latencyPlot draws ADD median against pods already on the node, one line
// per plugin and mapping count, on a log scale.
func latencyPlot(path string, levels []int, lines map[string][]float64, order []string) error {
	p := plot.New()
	p.Title.Text = "portmap ADD latency vs pods already on the node"
	p.X.Label.Text = "pods with port mappings already on the node"
	p.Y.Label.Text = "ADD median (ms, log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	var args []any
	for _, name := range order {
		pts := make(plotter.XYs, len(levels))
		for i, l := range levels {
			pts[i].X, pts[i].Y = float64(l), lines[name][i]
		}
		args = append(args, name, pts)
	}
	if err := plotutil.AddLinePoints(p, args...); err != nil {
		return err
	}
	// Head room above the slowest line for the legend.
	p.Y.Min, p.Y.Max = 2, 20000
	p.Legend.Top = true
	p.Legend.Left = true
	return p.Save(8*vg.Inch, 5*vg.Inch, path)
}

func writeFile(path, text string, w io.Writer) error {
	fmt.Fprintln(w, text)
	return os.WriteFile(path, []byte(text), 0o644)
}
