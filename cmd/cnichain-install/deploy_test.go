package main

import (
	"errors"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// daemonSet is the part of deploy/daemonset.yaml the installer depends on.
type daemonSet struct {
	Kind     string     `yaml:"kind"`
	Metadata objectMeta `yaml:"metadata"`
	Spec     struct {
		UpdateStrategy struct {
			Type          string `yaml:"type"`
			RollingUpdate struct {
				MaxSurge *string `yaml:"maxSurge"`
			} `yaml:"rollingUpdate"`
		} `yaml:"updateStrategy"`
		Template struct {
			Spec struct {
				ServiceAccountName string `yaml:"serviceAccountName"`
				HostNetwork        bool   `yaml:"hostNetwork"`
				Tolerations        []struct {
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

type objectMeta struct {
	Name      string `yaml:"name"`
	Namespace string `yaml:"namespace"`
}

// manifest is deploy/daemonset.yaml's documents, by kind.
func manifest(t *testing.T) map[string][]*yaml.Node {
	t.Helper()
	data, err := os.ReadFile("../../deploy/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs := map[string][]*yaml.Node{}
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	for {
		var doc yaml.Node
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			return docs
		} else if err != nil {
			t.Fatalf("deploy/daemonset.yaml: %v", err)
		}
		var head struct {
			Kind string `yaml:"kind"`
		}
		if err := doc.Decode(&head); err != nil {
			t.Fatalf("deploy/daemonset.yaml: %v", err)
		}
		docs[head.Kind] = append(docs[head.Kind], &doc)
	}
}

// only decodes the one document of kind into v.
func only(t *testing.T, docs map[string][]*yaml.Node, kind string, v any) {
	t.Helper()
	if len(docs[kind]) != 1 {
		t.Fatalf("deploy/daemonset.yaml has %d %ss, want one", len(docs[kind]), kind)
	}
	if err := docs[kind][0].Decode(v); err != nil {
		t.Fatalf("deploy/daemonset.yaml %s: %v", kind, err)
	}
}

// TestDaemonSetManifest: the manifest runs the image `make image` builds
// on every node, with the node's CNI directories mounted where the
// installer writes by default, and keeps the container running.
func TestDaemonSetManifest(t *testing.T) {
	var ds daemonSet
	only(t, manifest(t), "DaemonSet", &ds)
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
	if slices.Contains(c.Args, "-service-cidrs") {
		t.Errorf("args %v: -service-cidrs needs a -conflist, which the manifest does not give: off by default", c.Args)
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

// TestUpdateStrategy: a rolling update replaces a node's installer, never
// runs a second beside it (maxSurge): two installers of different
// versions on one node would both write the conflist, each its own.
func TestUpdateStrategy(t *testing.T) {
	var ds daemonSet
	only(t, manifest(t), "DaemonSet", &ds)
	u := ds.Spec.UpdateStrategy
	if u.Type != "" && u.Type != "RollingUpdate" && u.Type != "OnDelete" {
		t.Errorf("updateStrategy type %q, want RollingUpdate or OnDelete", u.Type)
	}
	if surge := u.RollingUpdate.MaxSurge; surge != nil && *surge != "0" && *surge != "0%" {
		t.Errorf("updateStrategy rollingUpdate maxSurge %q, want none or 0: two installers on a node would both write the conflist", *surge)
	}
}

// TestServiceAccount: the pod runs as an account of its own that may list
// and watch the ServiceCIDRs (what -service-cidrs reads) and do nothing
// else; the manifest holds nothing but it, its role and its binding
// beside the DaemonSet.
func TestServiceAccount(t *testing.T) {
	docs := manifest(t)
	var kinds []string
	for kind := range docs {
		kinds = append(kinds, kind)
	}
	slices.Sort(kinds)
	if want := []string{"ClusterRole", "ClusterRoleBinding", "DaemonSet", "ServiceAccount"}; !slices.Equal(kinds, want) {
		t.Errorf("deploy/daemonset.yaml holds %v, want %v", kinds, want)
	}
	var ds daemonSet
	only(t, docs, "DaemonSet", &ds)
	var sa struct {
		Metadata objectMeta `yaml:"metadata"`
	}
	only(t, docs, "ServiceAccount", &sa)
	if want := (objectMeta{Name: ds.Spec.Template.Spec.ServiceAccountName, Namespace: ds.Metadata.Namespace}); sa.Metadata != want || want.Name == "" {
		t.Errorf("ServiceAccount %+v, want the DaemonSet's serviceAccountName in its namespace, %+v", sa.Metadata, want)
	}

	var role struct {
		APIVersion      string     `yaml:"apiVersion"`
		Metadata        objectMeta `yaml:"metadata"`
		AggregationRule any        `yaml:"aggregationRule"`
		Rules           []struct {
			APIGroups       []string `yaml:"apiGroups"`
			Resources       []string `yaml:"resources"`
			Verbs           []string `yaml:"verbs"`
			ResourceNames   []string `yaml:"resourceNames"`
			NonResourceURLs []string `yaml:"nonResourceURLs"`
		} `yaml:"rules"`
	}
	only(t, docs, "ClusterRole", &role)
	if role.APIVersion != "rbac.authorization.k8s.io/v1" || role.AggregationRule != nil || len(role.Rules) != 1 {
		t.Fatalf("ClusterRole %+v: want one rule of rbac.authorization.k8s.io/v1, no aggregation", role)
	}
	rule := role.Rules[0]
	verbs := slices.Sorted(slices.Values(rule.Verbs))
	if !slices.Equal(rule.APIGroups, []string{"networking.k8s.io"}) || !slices.Equal(rule.Resources, []string{"servicecidrs"}) ||
		!slices.Equal(verbs, []string{"list", "watch"}) || rule.ResourceNames != nil || rule.NonResourceURLs != nil {
		t.Errorf("ClusterRole rule %+v: want list and watch of networking.k8s.io servicecidrs, nothing more", rule)
	}

	var binding struct {
		APIVersion string `yaml:"apiVersion"`
		RoleRef    struct {
			APIGroup string `yaml:"apiGroup"`
			Kind     string `yaml:"kind"`
			Name     string `yaml:"name"`
		} `yaml:"roleRef"`
		Subjects []struct {
			Kind      string `yaml:"kind"`
			Name      string `yaml:"name"`
			Namespace string `yaml:"namespace"`
		} `yaml:"subjects"`
	}
	only(t, docs, "ClusterRoleBinding", &binding)
	ref := binding.RoleRef
	if binding.APIVersion != "rbac.authorization.k8s.io/v1" || ref.APIGroup != "rbac.authorization.k8s.io" || ref.Kind != "ClusterRole" || ref.Name != role.Metadata.Name {
		t.Errorf("ClusterRoleBinding roleRef %+v, want the ClusterRole %q", ref, role.Metadata.Name)
	}
	if len(binding.Subjects) != 1 || binding.Subjects[0].Kind != "ServiceAccount" ||
		(objectMeta{Name: binding.Subjects[0].Name, Namespace: binding.Subjects[0].Namespace}) != sa.Metadata {
		t.Errorf("ClusterRoleBinding subjects %+v, want the ServiceAccount %+v alone", binding.Subjects, sa.Metadata)
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
