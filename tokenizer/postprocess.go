package tokenizer

import (
	"encoding/json"
	"fmt"
)

// postProcessor adds special tokens around a single encoded sequence. It only
// runs when Encode is called with addSpecialTokens (HF skips it otherwise).
type postProcessor interface {
	process(ids []int) []int
}

type postSequence []postProcessor

func (q postSequence) process(ids []int) []int {
	for _, p := range q {
		ids = p.process(ids)
	}
	return ids
}

// postTemplate is TemplateProcessing restricted to its "single" template.
type postTemplate struct {
	items [][]int // nil entry = the sequence itself
}

func (p postTemplate) process(ids []int) []int {
	out := make([]int, 0, len(ids)+4)
	for _, it := range p.items {
		if it == nil {
			out = append(out, ids...)
		} else {
			out = append(out, it...)
		}
	}
	return out
}

// postNoop is ByteLevel (offsets only, ids untouched).
type postNoop struct{}

func (postNoop) process(ids []int) []int { return ids }

func parsePostProcessor(raw json.RawMessage) (postProcessor, error) {
	if isNull(raw) {
		return nil, nil
	}
	var head rawComponent
	if err := json.Unmarshal(raw, &head); err != nil {
		return nil, malformed("post_processor", "%v", err)
	}
	switch head.Type {
	case "ByteLevel":
		return postNoop{}, nil
	case "Sequence":
		var v struct {
			Processors []json.RawMessage `json:"processors"`
		}
		if err := json.Unmarshal(raw, &v); err != nil {
			return nil, malformed("post_processor.processors", "%v", err)
		}
		var seq postSequence
		for _, r := range v.Processors {
			p, err := parsePostProcessor(r)
			if err != nil {
				return nil, err
			}
			if p != nil {
				seq = append(seq, p)
			}
		}
		return seq, nil
	case "TemplateProcessing":
		var v struct {
			Single []struct {
				SpecialToken *struct {
					ID string `json:"id"`
				} `json:"SpecialToken"`
				Sequence *struct {
					ID string `json:"id"`
				} `json:"Sequence"`
			} `json:"single"`
			SpecialTokens map[string]struct {
				IDs []int `json:"ids"`
			} `json:"special_tokens"`
		}
		if err := json.Unmarshal(raw, &v); err != nil {
			return nil, malformed("post_processor.single", "%v", err)
		}
		var p postTemplate
		for i, it := range v.Single {
			switch {
			case it.Sequence != nil:
				if it.Sequence.ID != "A" {
					return nil, malformed("post_processor.single", "item %d: single template refers to sequence %q", i, it.Sequence.ID)
				}
				p.items = append(p.items, nil)
			case it.SpecialToken != nil:
				st, ok := v.SpecialTokens[it.SpecialToken.ID]
				if !ok {
					return nil, malformed("post_processor.special_tokens", "missing %q", it.SpecialToken.ID)
				}
				p.items = append(p.items, append([]int{}, st.IDs...))
			default:
				return nil, malformed("post_processor.single", "item %d is neither SpecialToken nor Sequence", i)
			}
		}
		return p, nil
	case "BertProcessing", "RobertaProcessing":
		var v struct {
			Sep []any `json:"sep"`
			Cls []any `json:"cls"`
		}
		if err := json.Unmarshal(raw, &v); err != nil {
			return nil, malformed("post_processor.cls", "%v", err)
		}
		cls, err1 := pairID(v.Cls)
		sep, err2 := pairID(v.Sep)
		if err1 != nil || err2 != nil {
			return nil, malformed("post_processor.cls", "want [token, id] pairs for cls and sep")
		}
		return postTemplate{items: [][]int{{cls}, nil, {sep}}}, nil
	}
	return nil, unsupported("post_processor", head.Type)
}

func pairID(v []any) (int, error) {
	if len(v) != 2 {
		return 0, fmt.Errorf("want 2 elements")
	}
	f, ok := v[1].(float64)
	if !ok {
		return 0, fmt.Errorf("id is not a number")
	}
	return int(f), nil
}
