package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Client sends streaming completions and times them.
type Client struct {
	base        string // http://host:port
	hc          *http.Client
	timeout     time.Duration
	temperature float64
}

func NewClient(base string, timeout time.Duration, temperature float64) *Client {
	tr := &http.Transport{
		Proxy:               nil, // never route benchmark traffic through an environment proxy
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        4096,
		MaxIdleConnsPerHost: 4096, // open-loop bursts must not pay connection setup on every request
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &Client{base: strings.TrimRight(base, "/"), hc: &http.Client{Transport: tr}, timeout: timeout, temperature: temperature}
}

func (c *Client) Close() { c.hc.CloseIdleConnections() }

type completionBody struct {
	Model          string  `json:"model"`
	Prompt         any     `json:"prompt"`
	MaxTokens      int     `json:"max_tokens"`
	IgnoreEOS      bool    `json:"ignore_eos"`
	Temperature    float64 `json:"temperature"`
	Stream         bool    `json:"stream"`
	ReturnTokenIDs bool    `json:"return_token_ids"`
	StreamOptions  struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

// chunk is the part of an SSE completion chunk (or in-band error event) that we read.
type chunk struct {
	Choices []struct {
		Text         string  `json:"text"`
		TokenIDs     []int   `json:"token_ids"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		CompletionTokens    int `json:"completion_tokens"`
		PromptTokensDetails *struct {
			CachedTokens int `json:"cached_tokens"`
		} `json:"prompt_tokens_details"`
	} `json:"usage"`
	Error *struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	} `json:"error"`
}

// Complete sends one streaming completion and measures it. It never returns an error: failures
// are classified in Result.Status so that the report can count them by kind.
func (c *Client) Complete(ctx context.Context, model string, p *Planned) Result {
	r := Result{Model: model, Expected: p.MaxTokens, PromptLen: p.PromptLen}
	body := completionBody{Model: model, MaxTokens: p.MaxTokens, IgnoreEOS: true, Temperature: c.temperature, Stream: true, ReturnTokenIDs: true}
	body.StreamOptions.IncludeUsage = true
	if p.PromptIDs != nil {
		body.Prompt = p.PromptIDs
	} else {
		body.Prompt = p.PromptTxt
	}
	buf, _ := json.Marshal(body)
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/v1/completions", bytes.NewReader(buf))
	if err != nil {
		r.Status = "bad request"
		return r
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	r.Sent = time.Now()
	resp, err := c.hc.Do(req)
	if err != nil {
		r.Status = classify(ctx, err)
		return r
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) // lets the connection be reused
		r.Status = fmt.Sprintf("HTTP %d", resp.StatusCode)
		return r
	}
	r.Status = c.readStream(ctx, resp.Body, &r, p.KeepOutput)
	r.E2E = time.Since(r.Sent)
	return r
}

// readStream consumes the SSE body, stamping each chunk that carries tokens. A chunk of k
// tokens after the first adds k inter-token gaps of (gap / k): serve.Stream merges the tokens a
// slow reader has not taken yet into one event, and counting such a chunk as one gap would make
// the server look k times slower per token. Extra tokens in the first chunk add no gap (they
// arrived with the first token).
func (c *Client) readStream(ctx context.Context, body io.Reader, r *Result, keep bool) string {
	br := bufio.NewReaderSize(body, 64<<10)
	var last time.Time
	counted, usage, finished := 0, -1, false
	for {
		line, err := br.ReadSlice('\n')
		now := time.Now()
		if err != nil && !(errors.Is(err, io.EOF) && len(line) > 0) {
			if errors.Is(err, bufio.ErrBufferFull) {
				return "oversized SSE line"
			}
			if errors.Is(err, io.EOF) {
				return "stream ended without [DONE]"
			}
			return classify(ctx, err)
		}
		data, ok := bytes.CutPrefix(bytes.TrimRight(line, "\r\n"), []byte("data:"))
		if !ok {
			continue // blank separators, comments, event: lines
		}
		data = bytes.TrimSpace(data)
		if string(data) == "[DONE]" {
			break
		}
		var ch chunk
		if err := json.Unmarshal(data, &ch); err != nil {
			return "bad SSE JSON"
		}
		if ch.Error != nil {
			return "stream error: " + ch.Error.Type
		}
		if ch.Usage != nil {
			usage = ch.Usage.CompletionTokens
			if d := ch.Usage.PromptTokensDetails; d != nil {
				r.CachedTokens = d.CachedTokens
			}
		}
		k := 0
		for _, choice := range ch.Choices {
			switch {
			case choice.TokenIDs != nil:
				k += len(choice.TokenIDs)
				if keep {
					r.Output = append(r.Output, choice.TokenIDs...)
				}
			case choice.Text != "":
				k++ // a server without return_token_ids: one token per text chunk
			}
			if choice.FinishReason != nil {
				finished = true
			}
		}
		if k == 0 {
			continue
		}
		if counted == 0 {
			r.TTFT = now.Sub(r.Sent)
		} else {
			gap := now.Sub(last) / time.Duration(k)
			for range k {
				r.ITL = append(r.ITL, gap)
			}
		}
		counted += k
		r.Chunks++
		last = now
	}
	if !finished {
		return "no finish_reason"
	}
	r.Tokens = counted
	if usage >= 0 {
		r.Tokens = usage
	}
	if counted == 0 {
		return "no tokens"
	}
	return ""
}

func classify(ctx context.Context, err error) string {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case ctx.Err() != nil:
		return "cancelled"
	}
	return "transport error"
}
