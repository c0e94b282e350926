package openai

import (
	"encoding/json"
	"strings"
	"testing"
)

// responsesTools, where Responses function tools reach chat's tool calling, gives chat's
// forms: a function tool's fields move under "function", a named tool_choice
// becomes {"type":"function","function":{"name"}}, modes pass as they are; built-in tools and
// malformed ones are 400s naming tools or tool_choice.
func TestResponsesToolsGiveChatForms(t *testing.T) {
	tools := []json.RawMessage{
		json.RawMessage(`{"type":"function","name":"get_weather","description":"Weather now","parameters":{"type":"object","properties":{"city":{"type":"string"}}},"strict":true}`),
		json.RawMessage(`{"type":"function","name":"now"}`),
	}
	compact := func(s string) string {
		var v any
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		b, _ := json.Marshal(v)
		return string(b)
	}
	for _, tc := range []struct{ choice, want string }{
		{``, ``}, {`"auto"`, `"auto"`}, {`"required"`, `"required"`},
		{`{"type":"function","name":"now"}`, `{"type":"function","function":{"name":"now"}}`},
	} {
		chatTools, chatChoice, err := responsesTools(tools, json.RawMessage(tc.choice))
		if err != nil {
			t.Fatalf("choice %s: %v", tc.choice, err)
		}
		wantTools := []string{
			`{"type":"function","function":{"name":"get_weather","description":"Weather now","parameters":{"type":"object","properties":{"city":{"type":"string"}}},"strict":true}}`,
			`{"type":"function","function":{"name":"now"}}`,
		}
		for i, w := range wantTools {
			if got := compact(string(chatTools[i])); got != compact(w) {
				t.Errorf("tool %d: %s, want %s", i, got, w)
			}
		}
		if got := string(chatChoice); (tc.want == "" && got != "") || (tc.want != "" && compact(got) != compact(tc.want)) {
			t.Errorf("tool_choice %s: %s, want %s", tc.choice, got, tc.want)
		}
	}
	for _, tc := range []struct{ tools, choice, param, want string }{
		{`{"type":"web_search"}`, ``, "tools", `"web_search"`},
		{`{"type":"function"}`, ``, "tools", "name is required"},
		{`5`, ``, "tools", "must be an object"},
		{`{"type":"function","name":"f"}`, `"sometimes"`, "tool_choice", "sometimes"},
		{`{"type":"function","name":"f"}`, `{"type":"file_search"}`, "tool_choice", "tool_choice must be"},
	} {
		_, _, err := responsesTools([]json.RawMessage{json.RawMessage(tc.tools)}, json.RawMessage(tc.choice))
		ae, ok := err.(*apiError)
		if !ok || ae.param != tc.param || !strings.Contains(ae.msg, tc.want) {
			t.Errorf("tools %s choice %s: %v, want a 400 naming %s with %q", tc.tools, tc.choice, err, tc.param, tc.want)
		}
	}
}
