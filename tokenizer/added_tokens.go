package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// addedToken mirrors an entry of tokenizer.json "added_tokens".
type addedToken struct {
	ID         int    `json:"id"`
	Content    string `json:"content"`
	SingleWord bool   `json:"single_word"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized bool   `json:"normalized"`
	Special    bool   `json:"special"`
}

// trie is a byte trie over added-token patterns giving leftmost-longest
// matches, the MatchKind HF builds its Aho-Corasick automaton with.
type trie struct {
	nodes []trieNode
	first [256]bool // bytes that can start a pattern: cheap skip
}

type trieNode struct {
	next  map[byte]int32
	token int32 // index into the added tokens, -1 if no pattern ends here
}

func newTrie() *trie { return &trie{nodes: []trieNode{{token: -1}}} }

func (t *trie) insert(pat string, token int) {
	if pat == "" {
		return
	}
	t.first[pat[0]] = true
	n := 0
	for i := 0; i < len(pat); i++ {
		nd := &t.nodes[n]
		if nd.next == nil {
			nd.next = map[byte]int32{}
		}
		c, ok := nd.next[pat[i]]
		if !ok {
			c = int32(len(t.nodes))
			nd.next[pat[i]] = c
			t.nodes = append(t.nodes, trieNode{token: -1})
		}
		n = int(c)
	}
	// Later duplicates win, like HF's map from content to id.
	t.nodes[n].token = int32(token)
}

// longestAt returns the token and end of the longest pattern starting at i.
func (t *trie) longestAt(s string, i int) (token, end int) {
	token, n := -1, 0
	for j := i; j < len(s); j++ {
		c, ok := t.nodes[n].next[s[j]]
		if !ok {
			break
		}
		n = int(c)
		if tk := t.nodes[n].token; tk >= 0 {
			token, end = int(tk), j+1
		}
	}
	return token, end
}

// segment is a piece of the input: either an added token (tok >= 0) or text
// still to be normalized / tokenized by the model.
type segment struct {
	text string
	tok  int // index into Tokenizer.added, -1 for plain text
	off  int // byte offset of text in the string that was split
}

// splitAdded splits s around added-token matches, applying the single_word,
// lstrip and rstrip rules (HF AddedVocabulary::find_matches).
func (t *Tokenizer) splitAdded(dst []segment, s string, tr *trie) []segment {
	if tr == nil || s == "" {
		if s != "" {
			dst = append(dst, segment{s, -1, 0})
		}
		return dst
	}
	startOffset := 0
	for i := 0; i < len(s); {
		if !tr.first[s[i]] {
			i++
			continue
		}
		tk, stop := tr.longestAt(s, i)
		if tk < 0 {
			i++
			continue
		}
		start := i
		// The automaton resumes after the raw match whatever the rules below
		// decide, as HF's leftmost_find_iter does.
		i = stop
		at := &t.added[tk]
		if at.SingleWord {
			startSpace := start == 0 || !endsWithWord(s[:start])
			stopSpace := stop == len(s) || !startsWithWord(s[stop:])
			if !startSpace || !stopSpace {
				continue
			}
		}
		if at.LStrip {
			ns := start
			for ns > 0 {
				r, size := utf8.DecodeLastRuneInString(s[:ns])
				if !unicode.IsSpace(r) {
					break
				}
				ns -= size
			}
			start = max(ns, startOffset)
		}
		if at.RStrip {
			for stop < len(s) {
				r, size := utf8.DecodeRuneInString(s[stop:])
				if !unicode.IsSpace(r) {
					break
				}
				stop += size
			}
		}
		if startOffset < start {
			dst = append(dst, segment{s[startOffset:start], -1, startOffset})
		}
		dst = append(dst, segment{s[start:stop], tk, start})
		startOffset = stop
	}
	if startOffset < len(s) {
		dst = append(dst, segment{s[startOffset:], -1, startOffset})
	}
	return dst
}

// isWordRune is the Unicode \w of the Rust regex crate.
func isWordRune(r rune) bool {
	return r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.Is(unicode.Nd, r) ||
		unicode.Is(unicode.M, r) || unicode.Is(unicode.Pc, r) || unicode.Is(unicode.Join_Control, r)
}

func endsWithWord(s string) bool {
	r, _ := utf8.DecodeLastRuneInString(s)
	return s != "" && isWordRune(r)
}

func startsWithWord(s string) bool {
	r, _ := utf8.DecodeRuneInString(s)
	return s != "" && isWordRune(r)
}
