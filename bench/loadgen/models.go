package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// discover asks a running server for its models: the one without a parent is the base, the
// others are adapters (vLLM's and loraplex's /v1/models both say so).
func discover(ctx context.Context, c *Client) (base string, adapters []string, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/v1/models", nil)
	if err != nil {
		return "", nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return "", nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", nil, fmt.Errorf("GET /v1/models: HTTP %d", resp.StatusCode)
	}
	var list struct {
		Data []struct {
			ID     string  `json:"id"`
			Parent *string `json:"parent"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return "", nil, fmt.Errorf("GET /v1/models: %w", err)
	}
	for _, m := range list.Data {
		if m.Parent == nil || *m.Parent == "" {
			if base == "" {
				base = m.ID
			}
		} else {
			adapters = append(adapters, m.ID)
		}
	}
	if base == "" {
		return "", nil, fmt.Errorf("GET /v1/models: no base model listed")
	}
	return base, adapters, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
