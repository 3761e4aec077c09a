package main

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// daemonSet is the part of deploy/daemonset.yaml the installer depends on.
type daemonSet struct {
	Kind string `yaml:"kind"`
	Spec struct {
		Template struct {
			Spec struct {
				HostNetwork bool `yaml:"hostNetwork"`
				Tolerations []struct {
					Operator string `yaml:"operator"`
					Key      string `yaml:"key"`
				} `yaml:"tolerations"`
				Containers []struct {
					Image     string   `yaml:"image"`
					Args      []string `yaml:"args"`
					Resources struct {
						Requests map[string]string `yaml:"requests"`
					} `yaml:"resources"`
					SecurityContext struct {
						Capabilities struct {
							Add  []string `yaml:"add"`
							Drop []string `yaml:"drop"`
						} `yaml:"capabilities"`
					} `yaml:"securityContext"`
					VolumeMounts []struct {
						Name      string `yaml:"name"`
						MountPath string `yaml:"mountPath"`
					} `yaml:"volumeMounts"`
				} `yaml:"containers"`
				Volumes []struct {
					Name     string `yaml:"name"`
					HostPath struct {
						Path string `yaml:"path"`
					} `yaml:"hostPath"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

// TestDaemonSetManifest: the manifest runs the image `make image` builds
// on every node, with the node's CNI directories mounted where the
// installer writes by default, and keeps the container running.
func TestDaemonSetManifest(t *testing.T) {
	data, err := os.ReadFile("../../deploy/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds daemonSet
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(false)
	if err := dec.Decode(&ds); err != nil {
		t.Fatalf("deploy/daemonset.yaml: %v", err)
	}
	pod := ds.Spec.Template.Spec
	if ds.Kind != "DaemonSet" || len(pod.Containers) != 1 {
		t.Fatalf("kind %q with %d containers, want a DaemonSet with one", ds.Kind, len(pod.Containers))
	}
	c := pod.Containers[0]
	makefile, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^IMAGE_NAME\s*\?=\s*(\S+)`).FindSubmatch(makefile)
	if m == nil {
		t.Fatal("Makefile names no IMAGE_NAME")
	}
	if repo, _, _ := strings.Cut(c.Image, ":"); repo != string(m[1]) {
		t.Errorf("image %q, but make image builds %s", c.Image, m[1])
	}
	if !slices.Contains(c.Args, "-agent") || !slices.Contains(c.Args, "-iptables-root=/host") {
		t.Errorf("args %v: want the agent (without it or -sleep the container exits and the DaemonSet restarts it forever), running the node's iptables from /host", c.Args)
	}
	for _, cap := range []string{"NET_ADMIN", "NET_RAW", "SYS_CHROOT"} {
		if !slices.Contains(c.SecurityContext.Capabilities.Add, cap) {
			t.Errorf("capabilities %v lack %s", c.SecurityContext.Capabilities.Add, cap)
		}
	}
	if !slices.Contains(c.SecurityContext.Capabilities.Drop, "ALL") {
		t.Errorf("capabilities drop %v, want ALL but those added", c.SecurityContext.Capabilities.Drop)
	}
	if !pod.HostNetwork {
		t.Error("hostNetwork is off: on a node without CNI the pod could never start")
	}
	if !slices.ContainsFunc(pod.Tolerations, func(tol struct {
		Operator string `yaml:"operator"`
		Key      string `yaml:"key"`
	}) bool {
		return tol.Operator == "Exists" && tol.Key == ""
	}) {
		t.Errorf("tolerations %v do not tolerate every taint", pod.Tolerations)
	}
	if c.Resources.Requests["cpu"] == "" || c.Resources.Requests["memory"] == "" {
		t.Errorf("resource requests %v", c.Resources.Requests)
	}
	hostPaths := map[string]string{}
	for _, v := range pod.Volumes {
		hostPaths[v.Name] = v.HostPath.Path
	}
	mounted := map[string]string{}
	for _, vm := range c.VolumeMounts {
		mounted[vm.MountPath] = hostPaths[vm.Name]
	}
	for inContainer, onNode := range map[string]string{defaultBinDir: "/opt/cni/bin", defaultConfDir: "/etc/cni/net.d",
		// What the agent reads, writes and runs: the records at the
		// plugins' default stateDirs, the pods' netns, the node's root and
		// its xtables lock.
		"/var/lib/cni": "/var/lib/cni", "/var/run/netns": "/var/run/netns", "/host": "/", "/host/run/xtables.lock": "/run/xtables.lock"} {
		if mounted[inContainer] != onNode {
			t.Errorf("%s is mounted from the node's %q, want %s", inContainer, mounted[inContainer], onNode)
		}
	}
}

// TestContainerfile: the image puts the plugins where the installer reads
// them and runs the installer.
func TestContainerfile(t *testing.T) {
	data, err := os.ReadFile("../../deploy/Containerfile")
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	for _, want := range []string{"COPY bin " + defaultSrc + "\n", `ENTRYPOINT ["/cnichain-install"]`} {
		if !strings.Contains(text, want) {
			t.Errorf("deploy/Containerfile lacks %q", want)
		}
	}
}
