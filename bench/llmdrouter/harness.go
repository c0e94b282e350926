//go:build ignore

// The llm-d-router harness: it asks a running endpoint picker (EPP) where requests should go,
// over the ext_proc gRPC stream Envoy would use, while it puts loraplex replicas into known
// adapter states with requests of its own. It is not built with loraplex: run.sh copies it
// into a checkout of llm-d-router, outside this repository, and runs it there, so it compiles
// against that snapshot's go.mod (Envoy's ext_proc API, gRPC). It contains no llm-d code.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extproc "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

var (
	eppAddr  = flag.String("epp", "127.0.0.1:9002", "the EPP's ext_proc address")
	replicas = flag.String("replicas", "127.0.0.1:8201,127.0.0.1:8202", "the loraplex replicas, host:port, as the EPP's endpoints file names them")
	picks    = flag.Int("picks", 5, "requests the EPP is asked to route per case")
	settle   = flag.Duration("settle", 500*time.Millisecond, "wait after changing the replicas' state, so the EPP's metric refresh sees it")
	mode     = flag.String("mode", "lora", "lora: adapter affinity (lora-affinity-scorer); prefix: the precise prefix-cache scorer fed by the replicas' KV events")
	render   = flag.String("render", "127.0.0.1:9100", "prefix mode: where the harness serves vLLM's /v1/completions/render for the EPP's token-producer, answered with the first replica's /tokenize")
	model    = flag.String("model", "loraplex-demo", "prefix mode: the served base model name")
)

// pick asks the EPP where one completion request should go and returns the endpoint and the
// per-endpoint scores it emitted (--emit-endpoint-scores).
func pick(ctx context.Context, c extproc.ExternalProcessorClient, model, prompt string) (string, map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := c.Process(ctx)
	if err != nil {
		return "", nil, err
	}
	defer st.CloseSend()
	body, _ := json.Marshal(map[string]any{"model": model, "prompt": prompt, "max_tokens": 8})
	hdr := func(k, v string) *corev3.HeaderValue { return &corev3.HeaderValue{Key: k, RawValue: []byte(v)} }
	if err := st.Send(&extproc.ProcessingRequest{Request: &extproc.ProcessingRequest_RequestHeaders{RequestHeaders: &extproc.HttpHeaders{
		Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{hdr(":method", "POST"), hdr(":path", "/v1/completions"),
			hdr(":authority", "loraplex"), hdr("content-type", "application/json"), hdr("content-length", fmt.Sprint(len(body)))}},
	}}}); err != nil {
		return "", nil, err
	}
	if err := st.Send(&extproc.ProcessingRequest{Request: &extproc.ProcessingRequest_RequestBody{RequestBody: &extproc.HttpBody{Body: body, EndOfStream: true}}}); err != nil {
		return "", nil, err
	}
	for {
		r, err := st.Recv()
		if err != nil {
			return "", nil, fmt.Errorf("no routing decision: %w", err)
		}
		if ir := r.GetImmediateResponse(); ir != nil {
			return "", nil, fmt.Errorf("EPP answered %v: %s", ir.GetStatus().GetCode(), ir.GetBody())
		}
		h := r.GetRequestHeaders()
		if h == nil {
			continue
		}
		var dest string
		for _, o := range h.GetResponse().GetHeaderMutation().GetSetHeaders() {
			if o.GetHeader().GetKey() == "x-gateway-destination-endpoint" {
				dest = string(o.GetHeader().GetRawValue())
			}
		}
		scores := map[string]float64{}
		lb := r.GetDynamicMetadata().GetFields()["envoy.lb"].GetStructValue().GetFields()
		for ep, v := range lb["x-gateway-destination-endpoint-scores"].GetStructValue().GetFields() {
			scores[ep] = v.GetNumberValue()
		}
		return dest, scores, nil
	}
}

// hold sends a long streaming completion for model straight to a replica and keeps it running
// until ctx ends: the state the EPP must then see.
func hold(ctx context.Context, replica, model string) {
	body, _ := json.Marshal(map[string]any{"model": model, "prompt": "int main(void) {\n", "max_tokens": 1900,
		"ignore_eos": true, "stream": true})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+replica+"/v1/completions", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
}

// loraInfo is the replica's vllm:lora_requests_info line, as the EPP scraped it.
func loraInfo(replica string) string {
	resp, err := http.Get("http://" + replica + "/metrics")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "vllm:lora_requests_info{") {
			return sc.Text()
		}
	}
	return "(no vllm:lora_requests_info)"
}

func main() {
	flag.Parse()
	reps := strings.Split(*replicas, ",")
	if *mode == "prefix" {
		os.Exit(prefixMain(reps))
	}
	cc, err := grpc.NewClient(*eppAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer cc.Close()
	c := extproc.NewExternalProcessorClient(cc)
	ctx := context.Background()
	failed := false

	// table routes each model picks times and prints where the requests went and the scores.
	table := func(title string, want map[string]string, models ...string) {
		fmt.Printf("\n### %s\n\n", title)
		for _, r := range reps {
			fmt.Printf("- %s: `%s`\n", r, loraInfo(r))
		}
		fmt.Printf("\n| model | picks per replica | scores (%s) | expected |\n|---|---|---|---|\n", strings.Join(reps, " / "))
		for _, m := range models {
			count := map[string]int{}
			var scoreRows []string
			for i := range *picks {
				dest, scores, err := pick(ctx, c, m, fmt.Sprintf("request %d for %s", i, m))
				if err != nil {
					fmt.Printf("| %s | error: %v | | |\n", m, err)
					failed = true
					return
				}
				count[dest]++
				var s []string
				for _, r := range reps {
					s = append(s, fmt.Sprintf("%.2f", scores[r]))
				}
				scoreRows = append(scoreRows, strings.Join(s, " / "))
			}
			var per []string
			for _, r := range reps {
				per = append(per, fmt.Sprintf("%s: %d", r, count[r]))
			}
			sort.Strings(scoreRows)
			scoreRows = compact(scoreRows)
			exp := "any"
			if w := want[m]; w != "" {
				exp = "all to " + w
				if count[w] != *picks {
					exp += " **NOT MET**"
					failed = true
				}
			}
			fmt.Printf("| %s | %s | %s | %s |\n", m, strings.Join(per, ", "), strings.Join(scoreRows, "; "), exp)
		}
	}

	// 1. Idle replicas: no adapter runs or waits anywhere, every replica has free slots.
	time.Sleep(*settle)
	table("Idle replicas", nil, "english", "python")

	// 2. english runs on replica 0; go runs on replica 1 and python waits there for its only
	// device slot (--max-loras 1), so replica 1 shows python as waiting only.
	hctx, stop := context.WithCancel(ctx)
	go hold(hctx, reps[0], "english")
	go hold(hctx, reps[1], "go")
	time.Sleep(200 * time.Millisecond)
	go hold(hctx, reps[1], "python")
	time.Sleep(*settle)
	table("english running on replica 0; go running and python waiting on replica 1",
		map[string]string{"english": reps[0], "go": reps[1], "python": reps[1]}, "english", "go", "python", "c")
	stop()
	if failed {
		os.Exit(1)
	}
}

func compact(s []string) []string {
	var out []string
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// serveRender answers vLLM's POST /v1/completions/render, which the EPP's token-producer calls
// to turn a request's prompt into token ids, with loraplex's /tokenize on replica: loraplex has
// no render endpoint, and the replicas share one tokenizer, so their token ids are the ones they
// cache and announce in their KV events.
func serveRender(addr, replica string) error {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/completions/render", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			Model  string `json:"model"`
			Prompt string `json:"prompt"`
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&in); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body, _ := json.Marshal(map[string]any{"model": in.Model, "prompt": in.Prompt})
		resp, err := http.Post("http://"+replica+"/tokenize", "application/json", bytes.NewReader(body))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		var tok struct {
			Tokens []uint32 `json:"tokens"`
		}
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			http.Error(w, string(b), resp.StatusCode)
			return
		}
		if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode([]map[string]any{{"token_ids": tok.Tokens}})
	})
	srv := &http.Server{Addr: addr, Handler: mux}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	go srv.Serve(ln)
	return nil
}

// complete sends one completion straight to a replica (not through the EPP) and waits for it:
// the replica prefills prompt, caches its pages and announces them in KV events.
func complete(replica, model, prompt string) error {
	body, _ := json.Marshal(map[string]any{"model": model, "prompt": prompt, "max_tokens": 1})
	resp, err := http.Post("http://"+replica+"/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, b)
	}
	return nil
}

// longPrompt is a deterministic prompt of several hundred tokens, distinct per seed word.
func longPrompt(seed string) string {
	var b strings.Builder
	for i := range 60 {
		fmt.Fprintf(&b, "%s line %d: the quick brown fox jumps over the lazy dog.\n", seed, i)
	}
	return b.String()
}

// prefixMain checks the precise prefix-cache scorer: the EPP is asked where a long prompt
// goes while both replicas are cold (and, since it only answers and forwards nothing, routing
// the prompt must not change its scores), then the prompt is sent straight to the second
// replica, whose KV events tell the EPP's indexer which pages it now holds, and the EPP is
// asked again. A second long prompt that no replica has seen is the control.
func prefixMain(reps []string) int {
	if err := serveRender(*render, reps[0]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cc, err := grpc.NewClient(*eppAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer cc.Close()
	c := extproc.NewExternalProcessorClient(cc)
	ctx := context.Background()
	warm, control := longPrompt("alpha"), longPrompt("omega")
	failed := false
	table := func(title, want string) {
		fmt.Printf("\n### %s\n\n| prompt | picks per replica | scores (%s) | expected |\n|---|---|---|---|\n", title, strings.Join(reps, " / "))
		for _, row := range []struct{ name, prompt, want string }{{"warmed (alpha)", warm, want}, {"control (omega)", control, ""}} {
			count := map[string]int{}
			var scoreRows []string
			for range *picks {
				dest, scores, err := pick(ctx, c, *model, row.prompt)
				if err != nil {
					fmt.Printf("| %s | error: %v | | |\n", row.name, err)
					failed = true
					return
				}
				count[dest]++
				var s []string
				for _, r := range reps {
					s = append(s, fmt.Sprintf("%.2f", scores[r]))
				}
				scoreRows = append(scoreRows, strings.Join(s, " / "))
			}
			var per []string
			for _, r := range reps {
				per = append(per, fmt.Sprintf("%s: %d", r, count[r]))
			}
			sort.Strings(scoreRows)
			exp := "any"
			if row.want != "" {
				exp = "all to " + row.want
				if count[row.want] != *picks {
					exp += " **NOT MET**"
					failed = true
				}
			}
			fmt.Printf("| %s | %s | %s | %s |\n", row.name, strings.Join(per, ", "), strings.Join(compact(scoreRows), "; "), exp)
		}
	}
	if n, err := tokenCount(reps[0], warm); err == nil {
		fmt.Printf("\nPrompts: two of %d tokens each (alpha, omega), %q...\n", n, warm[:40])
	}
	time.Sleep(*settle)
	table("Both replicas cold (the EPP is asked, nothing is forwarded)", "")
	if err := complete(reps[1], *model, warm); err != nil {
		fmt.Fprintln(os.Stderr, "warming", reps[1], err)
		return 1
	}
	time.Sleep(*settle)
	table(fmt.Sprintf("After alpha was sent straight to %s (not through the EPP)", reps[1]), reps[1])
	if failed {
		return 1
	}
	return 0
}

func tokenCount(replica, prompt string) (int, error) {
	body, _ := json.Marshal(map[string]any{"model": *model, "prompt": prompt})
	resp, err := http.Post("http://"+replica+"/tokenize", "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var tok struct {
		Count int `json:"count"`
	}
	err = json.NewDecoder(resp.Body).Decode(&tok)
	return tok.Count, err
}
