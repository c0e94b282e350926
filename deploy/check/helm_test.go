package check

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	"helm.sh/helm/v3/pkg/releaseutil"
	"helm.sh/helm/v3/pkg/strvals"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	infv1 "sigs.k8s.io/gateway-api-inference-extension/api/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"
)

const (
	chartDir    = "../helm/loraplex"
	kubeVersion = "v1.31.0" // the oldest Kubernetes the chart supports (preStop sleep action, native gRPC probe)
)

// The optional objects and settings, all on.
const allOn = "inferencePool.enabled=true,httpRoute.enabled=true,autoscaling.enabled=true,serviceMonitor.enabled=true," +
	"adapters.persistence.enabled=true,server.apiKeySecret.name=loraplex-key,bodyBasedRouting.enabled=true,server.kvEvents.enabled=true"

// renders are the values the chart is rendered with: each profile with its defaults, with every
// optional object on, and with the init-container adapter source instead of a PVC.
var renders = []struct{ name, set string }{
	{"cpu", "profile=cpu"},
	{"gpu", "profile=gpu"},
	{"cpu-all", "profile=cpu," + allOn},
	{"gpu-all", "profile=gpu," + allOn},
	{"cpu-init", "profile=cpu,adapters.init.enabled=true,inferencePool.enabled=true,httpRoute.enabled=true"},
	{"gpu-init", "profile=gpu,adapters.init.enabled=true,httpRoute.enabled=true,httpRoute.gateway.namespace=gw," +
		"httpRoute.gateway.sectionName=http,httpRoute.hostnames[0]=llm.example.com"},
	{"gpu-bbr", "profile=gpu,model.path=/models/Llama-3.2-1B-Instruct,bodyBasedRouting.enabled=true," +
		"bodyBasedRouting.adapters={sql-lora,support,yes},inferencePool.enabled=true,httpRoute.enabled=true"},
}

// bbrWant is what each render's body-based routing ConfigMap must map: the base model's name and
// the adapter names, or nil where the render has none.
var bbrWant = map[string]*struct {
	base     string
	adapters []string
}{
	"cpu-all": {"loraplex-demo", []string{"c", "english", "go", "python", "auto"}},
	"gpu-all": {"loraplex-demo", []string{"c", "english", "go", "python", "auto"}},
	"gpu-bbr": {"Llama-3.2-1B-Instruct", []string{"sql-lora", "support", "yes"}},
}

func values(t *testing.T, set string) map[string]any {
	t.Helper()
	v := map[string]any{}
	if err := strvals.ParseInto(set, v); err != nil {
		t.Fatalf("--set %s: %v", set, err)
	}
	return v
}

// helmTemplate renders the chart as `helm template lpx deploy/helm/loraplex --kube-version 1.31
// --set SET` does, with Helm's own packages and none of its cluster client: the chart's
// kubeVersion constraint, values merged and checked against the chart, Capabilities for that
// Kubernetes version, the template engine, then the manifests split, parsed and sorted in install
// order (releaseutil.SortManifests, which fails on a document that is not YAML).
func helmTemplate(t *testing.T, set string) (string, error) {
	t.Helper()
	chrt, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	caps := chartutil.DefaultCapabilities.Copy()
	caps.KubeVersion = *kv
	if c := chrt.Metadata.KubeVersion; c != "" && !chartutil.IsCompatibleRange(c, kv.String()) {
		return "", fmt.Errorf("chart requires kubeVersion %s, not %s", c, kv)
	}
	if err := chartutil.ProcessDependenciesWithMerge(chrt, values(t, set)); err != nil {
		return "", err
	}
	vals, err := chartutil.ToRenderValues(chrt, values(t, set),
		chartutil.ReleaseOptions{Name: "lpx", Namespace: "default", Revision: 1, IsInstall: true}, caps)
	if err != nil {
		return "", err
	}
	files, err := engine.Render(chrt, vals)
	if err != nil {
		return "", err
	}
	for name := range files {
		if strings.HasSuffix(name, "NOTES.txt") {
			delete(files, name)
		}
	}
	hooks, manifests, err := releaseutil.SortManifests(files, caps.APIVersions, releaseutil.InstallOrder)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, m := range manifests {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.Name, m.Content)
	}
	for _, h := range hooks {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", h.Path, h.Manifest)
	}
	return b.String(), nil
}

// TestHelmLint is `helm lint --strict` for each render: a warning fails as an error does.
func TestHelmLint(t *testing.T) {
	kv, _ := chartutil.ParseKubeVersion(kubeVersion)
	for _, r := range renders {
		l := lint.AllWithKubeVersion(chartDir, values(t, r.set), "default", kv)
		for _, m := range l.Messages {
			if m.Severity > support.InfoSev {
				t.Errorf("%s: helm lint: %s", r.name, m)
			} else {
				t.Logf("%s: helm lint: %s", r.name, m)
			}
		}
	}
}

// decoders maps apiVersion/kind to the published Go type each rendered object must decode into.
var decoders = map[string]func() any{
	"apps/v1/Deployment":                           func() any { return new(appsv1.Deployment) },
	"v1/Service":                                   func() any { return new(corev1.Service) },
	"v1/PersistentVolumeClaim":                     func() any { return new(corev1.PersistentVolumeClaim) },
	"autoscaling/v2/HorizontalPodAutoscaler":       func() any { return new(autoscalingv2.HorizontalPodAutoscaler) },
	"monitoring.coreos.com/v1/ServiceMonitor":      func() any { return new(monitoringv1.ServiceMonitor) },
	"inference.networking.k8s.io/v1/InferencePool": func() any { return new(infv1.InferencePool) },
	"gateway.networking.k8s.io/v1/HTTPRoute":       func() any { return new(gwv1.HTTPRoute) },
	"v1/ConfigMap":                                 func() any { return new(corev1.ConfigMap) },
}

// crds names the published CRD (module, file) whose openAPIV3Schema validates a kind.
var crds = map[string][2]string{
	"inference.networking.k8s.io/v1/InferencePool": {"sigs.k8s.io/gateway-api-inference-extension", "config/crd/bases/inference.networking.k8s.io_inferencepools.yaml"},
	"gateway.networking.k8s.io/v1/HTTPRoute":       {"sigs.k8s.io/gateway-api", "config/crd/standard/gateway.networking.k8s.io_httproutes.yaml"},
}

type object struct {
	source, apiKind string
	raw             []byte
}

// split returns the rendered documents with their apiVersion/kind.
func split(t *testing.T, manifest string) []object {
	t.Helper()
	var out []object
	for _, doc := range releaseutil.SplitManifests(manifest) {
		src := ""
		if i := strings.Index(doc, "# Source: "); i >= 0 {
			src, _, _ = strings.Cut(doc[i+len("# Source: "):], "\n")
		}
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Errorf("%s: not YAML: %v\n%s", src, err, doc)
			continue
		}
		if head.Kind == "" {
			continue // a template that rendered to nothing but comments
		}
		out = append(out, object{src, head.APIVersion + "/" + head.Kind, []byte(doc)})
	}
	return out
}

// TestHelmTemplate renders the chart for each set of values, decodes every object strictly into
// its Go type (unknown or duplicate fields fail), validates the inference-extension objects
// against their CRD schemas, and checks what issue 8 asks the objects to carry.
func TestHelmTemplate(t *testing.T) {
	schemas := map[string]*jsonschema.Schema{}
	for k, c := range crds {
		schemas[k] = crdSchema(t, c[0], c[1], k)
	}
	kinds := map[string]bool{}
	for _, r := range renders {
		out, err := helmTemplate(t, r.set)
		if err != nil {
			t.Errorf("%s: helm template: %v", r.name, err)
			continue
		}
		objs := split(t, out)
		for _, o := range objs {
			kinds[o.apiKind] = true
			dec := decoders[o.apiKind]
			if dec == nil {
				t.Errorf("%s: %s: %s has no known Go type to check it against", r.name, o.source, o.apiKind)
				continue
			}
			if err := yaml.UnmarshalStrict(o.raw, dec()); err != nil {
				t.Errorf("%s: %s: %s does not decode strictly: %v", r.name, o.source, o.apiKind, err)
			}
			if s := schemas[o.apiKind]; s != nil {
				j, err := yaml.YAMLToJSON(o.raw)
				if err != nil {
					t.Fatal(err)
				}
				v, err := jsonschema.UnmarshalJSON(bytes.NewReader(j))
				if err != nil {
					t.Fatal(err)
				}
				if err := s.Validate(v); err != nil {
					t.Errorf("%s: %s: %s fails its CRD schema: %v", r.name, o.source, o.apiKind, err)
				}
			}
		}
		checkRender(t, r.name, r.set, out, objs)
		checkBodyBasedRouting(t, r.name, objs)
	}
	for k := range decoders {
		if !kinds[k] {
			t.Errorf("no render produced a %s", k)
		}
	}
	// A liveness window shorter than the drain is refused.
	if _, err := helmTemplate(t, "server.shutdownTimeoutSeconds=120"); err == nil || !strings.Contains(err.Error(), "must exceed server.shutdownTimeoutSeconds") {
		t.Errorf("a shutdown timeout longer than the liveness window rendered: %v", err)
	}
	if _, err := helmTemplate(t, "profile=tpu"); err == nil || !strings.Contains(err.Error(), "is not in profiles") {
		t.Errorf("an unknown profile rendered: %v", err)
	}
	// Body-based routing refuses names the server could not serve, or could not tell apart.
	for _, bad := range []string{"={../etc}", "={a/b}", "={.hidden}", "={sql,sql}", "={loraplex-demo}", "={c}", "[0]=", "={123}"} {
		if _, err := helmTemplate(t, "bodyBasedRouting.enabled=true,bodyBasedRouting.adapters"+bad); err == nil || !strings.Contains(err.Error(), "bodyBasedRouting.adapters") {
			t.Errorf("bodyBasedRouting.adapters=%s rendered: %v", bad, err)
		}
	}
}

// checkBodyBasedRouting: the model-map ConfigMap carries the label body-based routing watches, the
// base model's name and the adapter list as YAML, and the HTTPRoute matches the base model's
// header; renders without body-based routing have neither.
func checkBodyBasedRouting(t *testing.T, name string, objs []object) {
	t.Helper()
	want := bbrWant[name]
	var cm *corev1.ConfigMap
	var route *gwv1.HTTPRoute
	for _, o := range objs {
		switch o.apiKind {
		case "v1/ConfigMap":
			cm = new(corev1.ConfigMap)
			if err := yaml.UnmarshalStrict(o.raw, cm); err != nil {
				t.Fatal(err)
			}
		case "gateway.networking.k8s.io/v1/HTTPRoute":
			route = new(gwv1.HTTPRoute)
			if err := yaml.UnmarshalStrict(o.raw, route); err != nil {
				t.Fatal(err)
			}
		}
	}
	if want == nil {
		if cm != nil {
			t.Errorf("%s: a ConfigMap without body-based routing", name)
		}
		return
	}
	if cm == nil {
		t.Errorf("%s: no body-based routing ConfigMap", name)
		return
	}
	if cm.Labels["inference.networking.k8s.io/bbr-managed"] != "true" {
		t.Errorf("%s: ConfigMap labels %v lack inference.networking.k8s.io/bbr-managed: \"true\"", name, cm.Labels)
	}
	if cm.Data["baseModel"] != want.base {
		t.Errorf("%s: baseModel %q, want %q", name, cm.Data["baseModel"], want.base)
	}
	var adapters []string
	if err := yaml.UnmarshalStrict([]byte(cm.Data["adapters"]), &adapters); err != nil {
		t.Errorf("%s: adapters is not a YAML list of names: %v\n%s", name, err, cm.Data["adapters"])
	}
	if strings.Join(adapters, ",") != strings.Join(want.adapters, ",") {
		t.Errorf("%s: adapters %q, want %q", name, adapters, want.adapters)
	}
	if route == nil {
		return
	}
	found := false
	for _, r := range route.Spec.Rules {
		for _, m := range r.Matches {
			for _, h := range m.Headers {
				found = found || (h.Name == "X-Gateway-Base-Model-Name" && h.Value == want.base)
			}
		}
	}
	if !found {
		t.Errorf("%s: the HTTPRoute does not match X-Gateway-Base-Model-Name: %s", name, want.base)
	}
}

func checkRender(t *testing.T, name, set, out string, objs []object) {
	t.Helper()
	var dep *appsv1.Deployment
	for _, o := range objs {
		if o.apiKind == "apps/v1/Deployment" {
			dep = new(appsv1.Deployment)
			if err := yaml.Unmarshal(o.raw, dep); err != nil {
				t.Fatal(err)
			}
		}
	}
	if dep == nil {
		t.Errorf("%s: no Deployment", name)
		return
	}
	pod := dep.Spec.Template
	for _, l := range []string{"llm-d.ai/engine-type", "inference.networking.k8s.io/engine-type"} {
		if pod.Labels[l] != "vllm" {
			t.Errorf("%s: pod lacks %s: vllm: %v", name, l, pod.Labels)
		}
	}
	c := pod.Spec.Containers[0]
	args := strings.Join(c.Args, " ")
	for _, a := range []string{"--adapter-dir=/adapters", "--shutdown-timeout=30s"} {
		if !strings.Contains(args, a) {
			t.Errorf("%s: args lack %s: %s", name, a, args)
		}
	}
	if g := pod.Spec.TerminationGracePeriodSeconds; g == nil || *g != 55 {
		t.Errorf("%s: terminationGracePeriodSeconds = %v, want 55 (preStop 20 + drain 30 + 5)", name, g)
	}
	if c.LivenessProbe == nil || c.LivenessProbe.GRPC == nil || c.LivenessProbe.GRPC.Port != 9000 {
		t.Errorf("%s: liveness is not the gRPC probe on 9000: %+v", name, c.LivenessProbe)
	}
	for what, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "readiness": c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/health" {
			t.Errorf("%s: %s probe is not httpGet /health: %+v", name, what, p)
		}
	}
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil {
		t.Errorf("%s: no preStop sleep", name)
	}
	gpu := c.Resources.Limits["nvidia.com/gpu"]
	if want := strings.Contains(set, "profile=gpu"); (gpu.Value() == 1) != want {
		t.Errorf("%s: nvidia.com/gpu limit = %s, want it only in the gpu profile", name, gpu.String())
	}
	mounted := false
	for _, m := range c.VolumeMounts {
		mounted = mounted || (m.MountPath == "/adapters" && m.ReadOnly)
	}
	if !mounted {
		t.Errorf("%s: no read-only adapters mount at /adapters: %+v", name, c.VolumeMounts)
	}
	if strings.Contains(set, "adapters.init.enabled=true") != (len(pod.Spec.InitContainers) == 1 && pod.Spec.InitContainers[0].Name == "fetch-adapters") {
		t.Errorf("%s: init containers %+v", name, pod.Spec.InitContainers)
	}
	if strings.Contains(set, "apiKeySecret") && !strings.Contains(args, "--api-key=$(LORAPLEX_API_KEY)") {
		t.Errorf("%s: api key secret set but no --api-key: %s", name, args)
	}
	checkKVEvents(t, name, strings.Contains(set, "kvEvents.enabled=true"), c)
}

// checkKVEvents: with server.kvEvents on, the server gets vLLM's --kv-events-config as one JSON
// argument (a ZMQ PUB bound on the kv-events port, llm-d's topic kv@<pod IP>:<HTTP port>@<served
// model>, the pod IP from the downward API) and PYTHONHASHSEED; off, none of it.
func checkKVEvents(t *testing.T, name string, on bool, c corev1.Container) {
	t.Helper()
	var cfg string
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--kv-events-config="); ok {
			cfg = v
		}
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	port := false
	for _, p := range c.Ports {
		port = port || (p.Name == "kv-events" && p.ContainerPort == 5557)
	}
	if !on {
		if cfg != "" || port || env["POD_IP"].Name != "" {
			t.Errorf("%s: KV events off but rendered: %q, port %v, env %v", name, cfg, port, env)
		}
		return
	}
	var kv map[string]any
	if err := json.Unmarshal([]byte(cfg), &kv); err != nil {
		t.Fatalf("%s: --kv-events-config %q: %v", name, cfg, err)
	}
	want := map[string]any{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:5557", "topic": "kv@$(POD_IP):8000@loraplex-demo"}
	if fmt.Sprint(kv) != fmt.Sprint(want) {
		t.Errorf("%s: --kv-events-config %v, want %v", name, kv, want)
	}
	if ip := env["POD_IP"]; ip.ValueFrom == nil || ip.ValueFrom.FieldRef == nil || ip.ValueFrom.FieldRef.FieldPath != "status.podIP" || !port {
		t.Errorf("%s: POD_IP %+v, kv-events port %v", name, ip, port)
	}
	if s, ok := env["PYTHONHASHSEED"]; !ok || s.Value != "" {
		t.Errorf("%s: PYTHONHASHSEED %+v, want the default seed \"\"", name, s)
	}
}

// crdSchema compiles version v1 of the CRD file in module mod (the version go.mod pins).
func crdSchema(t *testing.T, mod, file, apiKind string) *jsonschema.Schema {
	t.Helper()
	dir, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", mod).Output()
	if err != nil {
		t.Fatalf("go list -m %s: %v", mod, err)
	}
	if strings.TrimSpace(string(dir)) == "" {
		t.Fatalf("module %s is not in the module cache (go mod download %s)", mod, mod)
	}
	path := filepath.Join(strings.TrimSpace(string(dir)), file)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var crd struct {
		Spec struct {
			Versions []struct {
				Name   string `json:"name"`
				Schema struct {
					OpenAPIV3Schema map[string]any `json:"openAPIV3Schema"`
				} `json:"schema"`
			} `json:"versions"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(b, &crd); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	for _, v := range crd.Spec.Versions {
		if v.Name != "v1" {
			continue
		}
		// Round-trip through JSON so numbers are what the compiler expects.
		j, err := yaml.Marshal(v.Schema.OpenAPIV3Schema)
		if err != nil {
			t.Fatal(err)
		}
		j, err = yaml.YAMLToJSON(j)
		if err != nil {
			t.Fatal(err)
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(j))
		if err != nil {
			t.Fatal(err)
		}
		c := jsonschema.NewCompiler()
		c.DefaultDraft(jsonschema.Draft4) // OpenAPI 3.0 schemas are draft-4-like
		url := "file:///" + apiKind + ".json"
		if err := c.AddResource(url, doc); err != nil {
			t.Fatal(err)
		}
		s, err := c.Compile(url)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		return s
	}
	t.Fatalf("%s: no version v1", path)
	return nil
}
