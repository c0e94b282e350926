// Go-side inline helpers over the kernels' C ABI: device pointers cross as uintptr_t (they are
// not Go memory, so Go never holds them as unsafe.Pointer) and are cast back here, and C structs
// are filled or sized for Go. Every function, struct and limit these call or use is declared in
// kernels/loraplex_kernels.h (the one C ABI header); nothing is declared here or in a preamble.
#ifndef LORAPLEX_CUDA_SHIMS_H
#define LORAPLEX_CUDA_SHIMS_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "loraplex_kernels.h"

#define P(t, v) ((t)(uintptr_t)(v))
static inline void* P_void(uintptr_t v) { return (void*)v; }
static inline lp_stream P_stream(uintptr_t v) { return (lp_stream)v; }
static inline int s_malloc(uintptr_t* p, size_t n) { void* q = 0; int e = lp_malloc(&q, n); *p = (uintptr_t)q; return e; }
static inline int s_free(uintptr_t p) { return lp_free(P(void*, p)); }
static inline int s_malloc_host(uintptr_t* p, size_t n) { void* q = 0; int e = lp_malloc_host(&q, n); *p = (uintptr_t)q; return e; }
static inline int s_free_host(uintptr_t p) { return lp_free_host(P(void*, p)); }
static inline int s_memset(uintptr_t p, size_t n, uintptr_t s) { return lp_memset(P(void*, p), 0, n, P(lp_stream, s)); }
static inline int s_htod(uintptr_t dst, const void* src, size_t n, uintptr_t s) { return lp_memcpy_htod(P(void*, dst), src, n, P(lp_stream, s)); }
static inline int s_htod_pinned(uintptr_t dst, uintptr_t src, size_t n, uintptr_t s) { return lp_memcpy_htod(P(void*, dst), P(const void*, src), n, P(lp_stream, s)); }
static inline int s_dtoh(void* dst, uintptr_t src, size_t n, uintptr_t s) { return lp_memcpy_dtoh(dst, P(const void*, src), n, P(lp_stream, s)); }
static inline int s_stream_create(uintptr_t* s) { lp_stream q = 0; int e = lp_stream_create(&q); *s = (uintptr_t)q; return e; }
static inline int s_stream_sync(uintptr_t s) { return lp_stream_sync(P(lp_stream, s)); }
static inline int s_event_create(uintptr_t* e) { lp_event q = 0; int r = lp_event_create(&q); *e = (uintptr_t)q; return r; }
static inline int s_event_record(uintptr_t e, uintptr_t s) { return lp_event_record(P(lp_event, e), P(lp_stream, s)); }
static inline int s_stream_wait(uintptr_t s, uintptr_t e) { return lp_stream_wait(P(lp_stream, s), P(lp_event, e)); }
static inline int s_cublas_create(uintptr_t* h, uintptr_t s) { void* q = 0; int e = lp_cublas_create(&q, P(lp_stream, s)); *h = (uintptr_t)q; return e; }
static inline int s_gemm(uintptr_t h, int n, int m, int k, uintptr_t x, uintptr_t w, uintptr_t c, float alpha, float beta) {
	return lp_gemm_bf16(P(void*, h), n, m, k, P(const uint16_t*, x), P(const uint16_t*, w), P(float*, c), alpha, beta);
}
static inline int s_gemm_batched(uintptr_t h, int n, int m, int k, uintptr_t x, uintptr_t w, long long w_stride, uintptr_t c, long long c_stride, int batch) {
	return lp_gemm_bf16_batched(P(void*, h), n, m, k, P(const uint16_t*, x), P(const uint16_t*, w), w_stride, P(float*, c), c_stride, batch);
}
static inline int s_gemm_skinny(uintptr_t y, uintptr_t x, uintptr_t w, int n, int m, int k, uintptr_t s) {
	return lp_gemm_skinny_bf16(P(float*, y), P(const uint16_t*, x), P(const uint16_t*, w), n, m, k, P(lp_stream, s));
}
static inline int s_gemm_padded(uintptr_t h, int n, int m, int k, uintptr_t x, uintptr_t w, uintptr_t y, uintptr_t scratch, float alpha, float beta, uintptr_t s) {
	return lp_gemm_padded_bf16(P(void*, h), n, m, k, P(const uint16_t*, x), P(const uint16_t*, w), P(float*, y), P(float*, scratch), alpha, beta, P(lp_stream, s));
}
static inline int s_gemv(int n, int m, int k, uintptr_t x, uintptr_t w, uintptr_t y, float alpha, float beta, int opts, uintptr_t s) {
	return lp_gemv_bf16(n, m, k, P(const float*, x), P(const uint16_t*, w), P(float*, y), alpha, beta, opts, P(lp_stream, s));
}
static inline int s_gemv_rows(int n, int m, int k, uintptr_t x, uintptr_t w, uintptr_t y, float alpha, float beta, uintptr_t s) {
	return lp_gemv_rows_bf16(n, m, k, P(const float*, x), P(const uint16_t*, w), P(float*, y), alpha, beta, P(lp_stream, s));
}
static inline int s_gemm_invariant(int n, int m, int k, uintptr_t x, int x_bf16, uintptr_t w, uintptr_t y, float alpha, float beta, int variants, uintptr_t s) {
	return lp_gemm_invariant_bf16(n, m, k, P(const void*, x), x_bf16, P(const uint16_t*, w), P(float*, y), alpha, beta, variants, P(lp_stream, s));
}
static inline int s_f32_to_bf16(uintptr_t dst, uintptr_t src, size_t n, uintptr_t s) { return lp_f32_to_bf16(P(uint16_t*, dst), P(const float*, src), n, P(lp_stream, s)); }
static inline int s_embed(uintptr_t out, uintptr_t table, uintptr_t ids, int n, int dim, int vocab, uintptr_t s) {
	return lp_embed(P(float*, out), P(const uint16_t*, table), P(const int32_t*, ids), n, dim, vocab, P(lp_stream, s));
}
static inline int s_gather(uintptr_t out, uintptr_t x, uintptr_t rows, int n, int dim, int pdl, uintptr_t s) {
	return lp_gather_rows(P(float*, out), P(const float*, x), P(const int32_t*, rows), n, dim, pdl, P(lp_stream, s));
}
static inline int s_rmsnorm(uintptr_t out, uintptr_t x, uintptr_t w, int rows, int dim, float eps, int opts, uintptr_t s) {
	return lp_rmsnorm(P(float*, out), P(const float*, x), P(const float*, w), rows, dim, eps, opts, P(lp_stream, s));
}
static inline int s_add_rmsnorm(uintptr_t x, uintptr_t d, uintptr_t out, uintptr_t w, int rows, int dim, float eps, int opts, uintptr_t s) {
	return lp_add_rmsnorm(P(float*, x), P(const float*, d), P(float*, out), P(const float*, w), rows, dim, eps, opts, P(lp_stream, s));
}
static inline int s_rmsnorm_bf16(uintptr_t x, uintptr_t d, uintptr_t next, uintptr_t out, uintptr_t keep, uintptr_t w, int rows, int dim, float eps, int opts,
                                 uintptr_t s) {
	return lp_rmsnorm_bf16(P(const float*, x), P(const float*, d), P(float*, next), P(uint16_t*, out), P(float*, keep), P(const float*, w), rows, dim, eps, opts,
	                       P(lp_stream, s));
}
static inline int s_add_bias(uintptr_t x, uintptr_t b, int rows, int dim, int pdl, uintptr_t s) { return lp_add_bias(P(float*, x), P(const float*, b), rows, dim, pdl, P(lp_stream, s)); }
static inline int s_silu_mul(uintptr_t out, uintptr_t g, uintptr_t u, size_t n, uintptr_t s) { return lp_silu_mul(P(float*, out), P(const float*, g), P(const float*, u), n, P(lp_stream, s)); }
static inline int s_silu_mul_bf16(uintptr_t out, uintptr_t ob, uintptr_t g, uintptr_t u, size_t n, uintptr_t s) {
	return lp_silu_mul_bf16(P(float*, out), P(uint16_t*, ob), P(const float*, g), P(const float*, u), n, P(lp_stream, s));
}
static inline int s_rope(uintptr_t x, uintptr_t pos, uintptr_t table, int rows, int heads, int dim, uintptr_t s) {
	return lp_rope(P(float*, x), P(const int32_t*, pos), P(const float*, table), rows, heads, dim, P(lp_stream, s));
}
static inline int s_store_kv(uintptr_t kc, uintptr_t vc, uintptr_t k, uintptr_t v, uintptr_t slots, int n, int width, uintptr_t s) {
	return lp_store_kv(P(uint16_t*, kc), P(uint16_t*, vc), P(const float*, k), P(const float*, v), P(const int32_t*, slots), n, width, P(lp_stream, s));
}
static inline int s_rope_store_kv(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t kc, uintptr_t vc, uintptr_t pos, uintptr_t slots, uintptr_t table,
                                  int n, int heads, int kvh, int dim, int pdl, uintptr_t s) {
	return lp_rope_store_kv(P(float*, q), P(float*, k), P(const float*, v), P(uint16_t*, kc), P(uint16_t*, vc), P(const int32_t*, pos),
	                        P(const int32_t*, slots), P(const float*, table), n, heads, kvh, dim, pdl, P(lp_stream, s));
}
static inline int s_gemv_swiglu(int n, int m, int k, uintptr_t x, uintptr_t wg, uintptr_t wu, uintptr_t act, int opts, uintptr_t s) {
	return lp_gemv_swiglu_bf16(n, m, k, P(const float*, x), P(const uint16_t*, wg), P(const uint16_t*, wu), P(float*, act), opts, P(lp_stream, s));
}
// s_parts fills lp_gemv_parts from Go arrays of LP_GEMV_PARTS entries (parts used): ws, wsrcs
// (NULL: none), ys and ends.
static inline lp_gemv_parts s_parts(const uintptr_t* ws, const uintptr_t* wsrcs, const uintptr_t* ys, const uintptr_t* ends, int parts) {
	lp_gemv_parts p;
	memset(&p, 0, sizeof p);
	for (int g = 0; g < parts && g < LP_GEMV_PARTS; g++) {
		p.w[g] = P(const uint16_t*, ws[g]);
		if (wsrcs) p.wsrc[g] = P(const uint16_t* const*, wsrcs[g]);
		p.y[g] = P(float*, ys[g]);
		p.end[g] = (int)ends[g];
	}
	p.parts = parts;
	return p;
}
static inline int s_gemv_parts(int n, int k, uintptr_t x, const uintptr_t* ws, const uintptr_t* wsrcs, const uintptr_t* ys, const uintptr_t* ends, int parts, int opts, uintptr_t s) {
	return lp_gemv_parts_bf16(n, k, P(const float*, x), s_parts(ws, wsrcs, ys, ends, parts), opts, P(lp_stream, s));
}
// s_gemm_skinny_parts: the skinny products of parts ws/ys/ends (lp_gemm_skinny_parts_bf16) of x in bf16.
static inline int s_gemm_skinny_parts(int n, int k, uintptr_t x, const uintptr_t* ws, const uintptr_t* ys, const uintptr_t* ends, int parts, uintptr_t s) {
	return lp_gemm_skinny_parts_bf16(P(const uint16_t*, x), s_parts(ws, NULL, ys, ends, parts), n, k, P(lp_stream, s));
}
// s_gemv_parts_tab is s_gemv_parts with router tables among the parts: wtabs[g] (0: none) and
// their t_ranks[g] (lp_gemv_parts' wtab, t_rank).
static inline int s_gemv_parts_tab(int n, int k, uintptr_t x, const uintptr_t* ws, const uintptr_t* wtabs, const int* tranks,
                                   const uintptr_t* ys, const uintptr_t* ends, int parts, int opts, uintptr_t s) {
	lp_gemv_parts p = s_parts(ws, NULL, ys, ends, parts);
	for (int g = 0; g < parts && g < LP_GEMV_PARTS; g++) {
		p.wtab[g] = P(const lp_route_expert*, wtabs[g]);
		p.t_rank[g] = tranks[g];
	}
	return lp_gemv_parts_bf16(n, k, P(const float*, x), p, opts, P(lp_stream, s));
}
static inline int s_norm_gemv_parts(int n, int k, uintptr_t x, uintptr_t d, uintptr_t resid, uintptr_t nw, float eps, const uintptr_t* ws,
                                    const uintptr_t* wsrcs, const uintptr_t* ys, const uintptr_t* ends, int parts, int opts, uintptr_t s) {
	return lp_norm_gemv_parts_bf16(n, k, P(const float*, x), P(const float*, d), P(float*, resid), P(const float*, nw), eps,
	                               s_parts(ws, wsrcs, ys, ends, parts), opts, P(lp_stream, s));
}
static inline int s_norm_gemv_swiglu(int n, int m, int k, uintptr_t x, uintptr_t d, uintptr_t resid, uintptr_t nw, float eps, uintptr_t wg,
                                     uintptr_t wu, uintptr_t act, int opts, uintptr_t s) {
	return lp_norm_gemv_swiglu_bf16(n, m, k, P(const float*, x), P(const float*, d), P(float*, resid), P(const float*, nw), eps,
	                                P(const uint16_t*, wg), P(const uint16_t*, wu), P(float*, act), opts, P(lp_stream, s));
}
static inline int s_gemm_invariant_parts(int n, int k, uintptr_t x, int x_bf16, const uintptr_t* ws, const uintptr_t* ys, const uintptr_t* ends, int parts, int variants, uintptr_t s) {
	return lp_gemm_invariant_parts_bf16(n, k, P(const void*, x), x_bf16, s_parts(ws, NULL, ys, ends, parts), variants, P(lp_stream, s));
}
static inline int s_attention(uintptr_t out, uintptr_t q, uintptr_t kc, uintptr_t vc, uintptr_t pos, uintptr_t rows, uintptr_t rowseq, uintptr_t seqpages, uintptr_t pt,
                       int n, int heads, int kvh, int dim, int page, int window, float scale, int splits, int chunk, int kernel, uintptr_t scratch, int pdl,
                       uintptr_t s) {
	return lp_attention(P(float*, out), P(const float*, q), P(const uint16_t*, kc), P(const uint16_t*, vc), P(const int32_t*, pos), P(const int32_t*, rows),
	                    P(const int32_t*, rowseq), P(const int32_t*, seqpages), P(const int32_t*, pt), n, heads, kvh, dim, page, window, scale, splits, chunk,
	                    kernel, P(float*, scratch), pdl, P(lp_stream, s));
}
static inline int s_attention_prefill(uintptr_t out, uintptr_t q, uintptr_t kc, uintptr_t vc, uintptr_t pos, uintptr_t tiles, int ntiles, uintptr_t seqpages, uintptr_t pt,
                       int heads, int kvh, int dim, int page, int window, float scale, uintptr_t s) {
	return lp_attention_prefill(P(float*, out), P(const float*, q), P(const uint16_t*, kc), P(const uint16_t*, vc), P(const int32_t*, pos), P(const int32_t*, tiles), ntiles,
	                    P(const int32_t*, seqpages), P(const int32_t*, pt), heads, kvh, dim, page, window, scale, P(lp_stream, s));
}
static inline int s_attention_prefill_mma(uintptr_t out, uintptr_t q, uintptr_t kc, uintptr_t vc, uintptr_t pos, uintptr_t tiles, int ntiles, int tilerows, uintptr_t seqpages, uintptr_t pt,
                       int heads, int kvh, int dim, int page, int window, float scale, int splits, uintptr_t scratch, uintptr_t s) {
	return lp_attention_prefill_mma(P(float*, out), P(const float*, q), P(const uint16_t*, kc), P(const uint16_t*, vc), P(const int32_t*, pos), P(const int32_t*, tiles), ntiles, tilerows,
	                    P(const int32_t*, seqpages), P(const int32_t*, pt), heads, kvh, dim, page, window, scale, splits, P(float*, scratch), P(lp_stream, s));
}
static inline int s_lora(uintptr_t out, uintptr_t x, uintptr_t segs, int nsegs, int maxrows, int maxrank, uintptr_t scratch, int in, int outd, int phases, uintptr_t s) {
	return lp_lora(P(float*, out), P(const float*, x), P(const lp_lora_seg*, segs), nsegs, maxrows, maxrank, P(float*, scratch), in, outd, phases, P(lp_stream, s));
}
static inline int s_lora_wide(uintptr_t out, uintptr_t x, uintptr_t segs, int nsegs, int maxrows, int maxrank, uintptr_t scratch, int in, int outd,
                              int splits, int stride, int phases, uintptr_t s) {
	return lp_lora_wide(P(float*, out), P(const float*, x), P(const lp_lora_seg*, segs), nsegs, maxrows, maxrank, P(float*, scratch), in, outd,
	                    splits, stride, phases, P(lp_stream, s));
}
// lora_outs fills lp_lora_outs from Go arrays of LP_LORA_GROUP entries (groups used).
static inline lp_lora_outs lora_outs(const uintptr_t* outs, const uintptr_t* dims, const uintptr_t* ends, int groups) {
	lp_lora_outs o = {0};
	for (int g = 0; g < groups && g < LP_LORA_GROUP; g++) {
		o.out[g] = P(float*, outs[g]);
		o.out_dim[g] = (int)dims[g];
		o.end[g] = (int)ends[g];
	}
	o.groups = groups;
	return o;
}
static inline int s_lora_group(const uintptr_t* outs, const uintptr_t* dims, const uintptr_t* ends, int groups, uintptr_t x, uintptr_t segs, int nsegs,
                               int maxrows, int maxrank, uintptr_t scratch, int in, uintptr_t s) {
	return lp_lora_group(lora_outs(outs, dims, ends, groups), P(const float*, x), P(const lp_lora_seg*, segs), nsegs, maxrows, maxrank,
	                     P(float*, scratch), in, P(lp_stream, s));
}
static inline int s_lora_rope_store_kv(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t kc, uintptr_t vc, uintptr_t pos, uintptr_t slots,
                                       uintptr_t table, int n, int heads, int kvh, int dim, uintptr_t x, uintptr_t segs, int q_end, int k_end,
                                       int nsegs, int maxrows, int maxrank, uintptr_t scratch, int in, int splits, int stride, uintptr_t s) {
	return lp_lora_rope_store_kv(P(float*, q), P(float*, k), P(float*, v), P(uint16_t*, kc), P(uint16_t*, vc), P(const int32_t*, pos),
	                             P(const int32_t*, slots), P(const float*, table), n, heads, kvh, dim, P(const float*, x),
	                             P(const lp_lora_seg*, segs), q_end, k_end, nsegs, maxrows, maxrank, P(float*, scratch), in, splits, stride,
	                             P(lp_stream, s));
}
static inline int s_lora_swiglu(uintptr_t act, uintptr_t act_bf16, uintptr_t gate, uintptr_t up, int rows, int cols, uintptr_t x, uintptr_t segs,
                                int gate_end, int nsegs, int maxrows, int maxrank, uintptr_t scratch, int in, int splits, int stride, uintptr_t s) {
	return lp_lora_swiglu(P(float*, act), P(uint16_t*, act_bf16), P(const float*, gate), P(const float*, up), rows, cols, P(const float*, x),
	                      P(const lp_lora_seg*, segs), gate_end, nsegs, maxrows, maxrank, P(float*, scratch), in, splits, stride, P(lp_stream, s));
}
static inline int s_lora_group_wide(const uintptr_t* outs, const uintptr_t* dims, const uintptr_t* ends, int groups, uintptr_t x, uintptr_t segs, int nsegs,
                                    int maxrows, int maxrank, uintptr_t scratch, int in, int splits, int stride, uintptr_t s) {
	return lp_lora_group_wide(lora_outs(outs, dims, ends, groups), P(const float*, x), P(const lp_lora_seg*, segs), nsegs, maxrows, maxrank,
	                          P(float*, scratch), in, splits, stride, P(lp_stream, s));
}
static inline int s_lora_group_expand(const uintptr_t* outs, const uintptr_t* dims, const uintptr_t* ends, int groups, uintptr_t segs, int nsegs,
                                      int maxrows, uintptr_t scratch, uintptr_t s) {
	return lp_lora_group_expand(lora_outs(outs, dims, ends, groups), P(const lp_lora_seg*, segs), nsegs, maxrows, P(float*, scratch), P(lp_stream, s));
}
// seg_a_addr is the device address of table[i].a (lp_gemv_parts' wsrc for a folded shrink).
static inline uintptr_t seg_a_addr(uintptr_t table, int i) { return table + (uintptr_t)i * sizeof(lp_lora_seg) + offsetof(lp_lora_seg, a); }
static inline int seg_size(void) { return (int)sizeof(lp_lora_seg); }
static inline int s_sample(uintptr_t logits, int rows, int vocab, uintptr_t params, uintptr_t words, uintptr_t allowed, uintptr_t results, uintptr_t s) {
	return lp_sample(P(float*, logits), rows, vocab, P(const lp_sample_row*, params), P(int32_t*, words), P(const uint32_t*, allowed),
	                 P(lp_sample_result*, results), P(lp_stream, s));
}


// route.go
static inline int route_expert_size(void) { return (int)sizeof(lp_route_expert); }
static inline void s_set_route_expert(void* base, int i, uintptr_t a, uintptr_t b, int rank, int id, float scale) {
	lp_route_expert* e = (lp_route_expert*)base + i;
	e->a = P(const uint16_t*, a); e->b = P(const uint16_t*, b);
	e->rank = rank; e->id = id; e->scale = scale;
}
static inline int s_route_segs(uintptr_t logits, int n, int rows, int k, float t, int nulls, uintptr_t experts, uintptr_t segs,
                               int passes, int start, int t_stride, uintptr_t trace, int trace_cols, int layer, uintptr_t s) {
	return lp_route_segs(P(const float*, logits), n, rows, k, t, nulls, P(const lp_route_expert*, experts), P(lp_lora_seg*, segs),
	                     passes, start, t_stride, P(float*, trace), trace_cols, layer, P(lp_stream, s));
}
static inline int s_lora_routed(uintptr_t out, uintptr_t x, uintptr_t segs, int rows, int k, int maxrank, uintptr_t scratch, int in, int outd, uintptr_t s) {
	return lp_lora_routed(P(float*, out), P(const float*, x), P(const lp_lora_seg*, segs), rows, k, maxrank, P(float*, scratch), in, outd, P(lp_stream, s));
}
// s_route_args is one routing's lp_route_args, the same fields whichever launch takes it.
static inline lp_route_args s_route_args(uintptr_t logits, int rows, int k, float t, int nulls, int passes, int start, int seg_stride,
                                         uintptr_t experts, uintptr_t trace, int trace_cols, int layer, int staged) {
	lp_route_args ra;
	memset(&ra, 0, sizeof ra);
	ra.logits = P(const float*, logits);
	ra.rows = rows; ra.k = k; ra.nulls = nulls; ra.passes = passes; ra.start = start; ra.seg_stride = seg_stride;
	ra.temperature = t;
	ra.experts = P(const lp_route_expert*, experts);
	ra.trace = P(float*, trace); ra.trace_cols = trace_cols; ra.layer = layer;
	ra.staged = staged;
	return ra;
}
// s_route_lora_wide fills lp_route_args from scalars (a Go struct would need a C layout).
static inline int s_route_lora_wide(uintptr_t logits, int rows, int k, float t, int nulls, int passes, int start, int seg_stride, uintptr_t experts,
                                    uintptr_t trace, int trace_cols, int layer, uintptr_t out, uintptr_t x, uintptr_t segs, int n, int maxrank,
                                    uintptr_t scratch, int in, int outd, int splits, int stride, int staged, uintptr_t s) {
	const lp_route_args ra = s_route_args(logits, rows, k, t, nulls, passes, start, seg_stride, experts, trace, trace_cols, layer, staged);
	return lp_route_lora_wide(ra, P(float*, out), P(const float*, x), P(lp_lora_seg*, segs), n, maxrank, P(float*, scratch), in, outd,
	                          splits, stride, P(lp_stream, s));
}
// s_route_lora_group_wide fills lp_route_group from Go arrays of LP_LORA_GROUP entries (members
// used), the routings sharing start, the trace and the layer; em: the expert-major launches,
// with their plan (plan_len ints a member); rows: the routing shrink by rows; joins: the events
// the expands wait on (njoins of them).
static inline int s_route_lora_group_wide(const uintptr_t* logits, const int* rows, const int* k, const float* t, const int* nulls,
                                          const int* passes, const int* seg_stride, const uintptr_t* experts, const uintptr_t* traces,
                                          int trace_cols, int layer, const uintptr_t* segs, const uintptr_t* scratch, const uintptr_t* out,
                                          const int* out_dim, const int* max_rank, int members, int n, int start, uintptr_t x, int in,
                                          int splits, int stride, int staged, int em, uintptr_t plan, int plan_len, int rows_mode,
                                          const uintptr_t* joins, int njoins, uintptr_t s) {
	lp_route_group g;
	memset(&g, 0, sizeof g);
	for (int m = 0; m < members && m < LP_LORA_GROUP; m++) {
		g.ra[m] = s_route_args(logits[m], rows[m], k[m], t[m], nulls[m], passes[m], start, seg_stride[m], experts[m], traces[m], trace_cols, layer, staged);
		g.segs[m] = P(lp_lora_seg*, segs[m]);
		g.scratch[m] = P(float*, scratch[m]);
		g.out[m] = P(float*, out[m]);
		g.out_dim[m] = out_dim[m];
		g.max_rank[m] = max_rank[m];
	}
	g.members = members;
	g.n = n;
	for (int j = 0; j < njoins && j < LP_FORK_LANES; j++) g.joins[j] = P(lp_event, joins[j]);
	g.njoins = njoins;
	if (em) return lp_route_lora_group_em(g, P(const float*, x), in, splits, stride, P(int*, plan), plan_len, P(lp_stream, s));
	return lp_route_lora_group_wide(g, P(const float*, x), in, splits, stride, rows_mode, P(lp_stream, s));
}
// s_route_fold_expand fills lp_route_fold from Go arrays of LP_LORA_GROUP entries (members used).
static inline int s_route_fold_expand(const uintptr_t* logits, const int* rows, const int* k, const float* t, const int* nulls,
                                      const int* passes, const uintptr_t* experts, const uintptr_t* traces, int trace_cols, int layer,
                                      const uintptr_t* ts, const int* tranks, const uintptr_t* out, const int* out_dim, int members, int n,
                                      int staged, uintptr_t s) {
	lp_route_fold f;
	memset(&f, 0, sizeof f);
	for (int m = 0; m < members && m < LP_LORA_GROUP; m++) {
		f.ra[m] = s_route_args(logits[m], rows[m], k[m], t[m], nulls[m], passes[m], 0, 0, experts[m], traces[m], trace_cols, layer, staged);
		f.t[m] = P(const float*, ts[m]);
		f.t_rank[m] = tranks[m];
		f.out[m] = P(float*, out[m]);
		f.out_dim[m] = out_dim[m];
	}
	f.members = members;
	f.n = n;
	return lp_route_fold_expand(f, P(lp_stream, s));
}
static inline int s_lora_routed_wide(uintptr_t out, uintptr_t x, uintptr_t segs, int rows, int k, int maxrank, uintptr_t scratch, int in, int outd,
                                     int splits, int stride, uintptr_t s) {
	return lp_lora_routed_wide(P(float*, out), P(const float*, x), P(const lp_lora_seg*, segs), rows, k, maxrank, P(float*, scratch), in, outd,
	                           splits, stride, P(lp_stream, s));
}

// upload.go, slabpool.go, devicedecode.go
static inline int s_malloc_async(uintptr_t* p, size_t n, uintptr_t s) { void* q = 0; int e = lp_malloc_async(&q, n, P(lp_stream, s)); *p = (uintptr_t)q; return e; }
static inline int s_free_async(uintptr_t p, uintptr_t s) { return lp_free_async(P(void*, p), P(lp_stream, s)); }
static inline int s_dequant(uintptr_t descs, int n, unsigned int maxn, uintptr_t s) { return lp_dequant(P(const lp_dequant_desc*, descs), n, maxn, P(lp_stream, s)); }

#endif
