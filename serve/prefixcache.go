package serve

import (
	"crypto/sha256"
	"encoding/binary"
)

// Automatic prefix caching. A full KV page is identified by a pageKey: the SHA-256 of its
// parent page's key, what computed it (the base model, an adapter's content digest, or a
// router's bundle and experts' digests: identityOf) and its token ids. Keys chain from the first
// page, so a key stands for the whole prefix up to its page's end at its exact positions; a
// sequence reuses the longest run of indexed pages its tokens lead to (lookupPrefix) and
// prefills only the rest. The last token is always computed, so the step that ends the prompt
// produces its logits. Pages enter the index as they fill (registerPages) and leave it only when
// the allocator reuses them (least recently used first) or a step fails.

// pageKey identifies a full page's contents (see above).
type pageKey [32]byte

// baseIdentity is what computed the base model's pages (one engine serves one base model).
var baseIdentity = sha256.Sum256([]byte("loraplex base model v1"))

// identityOf returns what computes sq's pages, or false when sq's pages must not be shared: an
// adapter whose content is unknown (no digest).
func identityOf(sq *sequence) (pageKey, bool) {
	if sq.adapterW == nil {
		return baseIdentity, true
	}
	if sq.adapterW.Digest == ([32]byte{}) {
		return pageKey{}, false
	}
	return sha256.Sum256(append([]byte("loraplex adapter v1\x00"), sq.adapterW.Digest[:]...)), true
}

// pageKeyAt returns the key of sq's i-th page (its tokens must fill it), computing the keys of
// its pages up to i once: sq.keys keeps them, and they survive preemption (the tokens do).
func (e *Engine) pageKeyAt(sq *sequence, i int) pageKey {
	ps := e.opt.PageSize
	for len(sq.keys) <= i {
		j := len(sq.keys)
		var parent pageKey
		if j > 0 {
			parent = sq.keys[j-1]
		}
		buf := append(e.keyBuf[:0], parent[:]...)
		buf = append(buf, sq.identity[:]...)
		for _, t := range sq.tokens[j*ps : (j+1)*ps] {
			buf = binary.LittleEndian.AppendUint32(buf, uint32(t))
		}
		e.keyBuf = buf
		sq.keys = append(sq.keys, sha256.Sum256(buf))
	}
	return sq.keys[i]
}

// lookupPrefix gives sq, which holds no pages, the longest run of cached pages its tokens lead
// to, leaving at least its last token to compute; sq resumes after them. It returns the number
// of tokens reused.
func (e *Engine) lookupPrefix(sq *sequence) int {
	// Cached pages have no logits: a request that wants its prompt's logprobs computes it all.
	if !sq.cacheable || !e.pages.caching() || sq.params.PromptLogprobs != 0 {
		return 0
	}
	full := (len(sq.tokens) - 1) / e.opt.PageSize
	for i := 0; i < full; i++ {
		p, ok := e.pages.lookup(e.pageKeyAt(sq, i))
		if !ok {
			break
		}
		sq.pages = append(sq.pages, p)
	}
	sq.registered = len(sq.pages)
	sq.computed = len(sq.pages) * e.opt.PageSize
	return sq.computed
}

// registerPages indexes sq's pages that are full once the step being built has run, and with
// KV-cache events on records each run of pages that entered the index as stored.
func (e *Engine) registerPages(sq *sequence) {
	if !sq.cacheable || !e.pages.caching() {
		return
	}
	run := -1 // first page of the run of pages entering the index, if any
	for full := sq.computed / e.opt.PageSize; sq.registered < full; sq.registered++ {
		i := sq.registered
		var ext uint64
		if e.kvLog != nil {
			ext = e.llmdKeyAt(sq, i)
		}
		switch indexed := e.pages.register(sq.pages[i], e.pageKeyAt(sq, i), ext); {
		case e.kvLog == nil:
		case indexed && run < 0:
			run = i
		case !indexed && run >= 0:
			e.recordStored(sq, run, i)
			run = -1
		}
	}
	if run >= 0 {
		e.recordStored(sq, run, sq.registered)
	}
}

// llmdKeyAt returns the llm-d block hash of sq's i-th page (kvevents.go), computing the hashes
// of its pages up to i once, as pageKeyAt does.
func (e *Engine) llmdKeyAt(sq *sequence, i int) uint64 {
	ps := e.opt.PageSize
	for len(sq.llmdKeys) <= i {
		j := len(sq.llmdKeys)
		var parent uint64
		if j > 0 {
			parent = sq.llmdKeys[j-1]
		} else {
			name := sq.adapterName
			if name == "" {
				name = e.kvLog.model
			}
			parent = e.kvLog.hasher.root(name)
		}
		sq.llmdKeys = append(sq.llmdKeys, e.kvLog.hasher.block(parent, sq.tokens[j*ps:(j+1)*ps]))
	}
	return sq.llmdKeys[i]
}

// recordStored records sq's pages from..to-1, which just entered the index, as stored.
func (e *Engine) recordStored(sq *sequence, from, to int) {
	var parent uint64
	if from > 0 {
		parent = sq.llmdKeys[from-1]
	}
	ps := e.opt.PageSize
	e.kvLog.stored(sq.llmdKeys[from:to], parent, from > 0, sq.tokens[from*ps:to*ps], ps, sq.adapterName)
}
