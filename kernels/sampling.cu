// Logits processing and sampling on the device: one block per logits row chooses the row's next
// token (and its raw logprobs), so only a few bytes per row go back to the host instead of the
// whole row. model.SampleReference (model/sample.go) defines what this computes; the steps
// below follow it one for one:
//   1. log-sum-exp of the raw logits; the top-N raw logprobs by N block argmax passes, each
//      taking the best token ranked after the previous pick in (value desc, index asc) order;
//   2. raw values of the history and banned tokens are saved (for the chosen token's logprob),
//      then banned ids get -inf, history tokens the repetition and frequency/presence penalties
//      (in place: the logits buffer is scratch once the forward pass is done);
//   3. greedy rows: block argmax (first index on ties, like the host);
//      other rows: p = exp((l - max) / T) evaluated on the fly; the top-k and top-p cut-offs are
//      thresholds in the same rank order, found by binary search over the logit's ordered bits
//      and then, among tied logits, over the index, each probe one block reduction (count for
//      top-k, probability mass of the top-k survivors for top-p); min-p keeps p >= min_p;
//   4. the token: a walk over the kept tokens in index order, with a block-wide prefix sum per
//      1024 indices, stopping where the running sum exceeds u * sum(kept).
// The walk goes in index order, the CPU sampler's in rank order: both draw from the same
// distribution, but the same u (seed) may pick different tokens on the two backends.
#include <math_constants.h>
#include "common.cuh"

#define SAMPLE_THREADS 1024

// Rank key: larger means earlier in (value desc, index asc) order.
__device__ __forceinline__ uint32_t order_key(float f) {
    uint32_t u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ unsigned long long rank_key(float v, int i) {
    return ((unsigned long long)order_key(v) << 32) | (unsigned long long)(0xFFFFFFFFu - (uint32_t)i);
}
__device__ __forceinline__ int rank_index(unsigned long long k) { return (int)(0xFFFFFFFFu - (uint32_t)k); }

struct Shared {
    float f[32];
    int i[32];
    unsigned long long k[32];
};

template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, T* sh, T identity, Op op) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    T t = lane < warps ? sh[lane] : identity;
    for (int o = 16; o > 0; o >>= 1) t = op(t, __shfl_xor_sync(0xffffffffu, t, o));
    __syncthreads();
    return t;
}

struct OpSum { template <typename T> __device__ T operator()(T a, T b) const { return a + b; } };
struct OpMax { template <typename T> __device__ T operator()(T a, T b) const { return a > b ? a : b; } };
struct OpMin { template <typename T> __device__ T operator()(T a, T b) const { return a < b ? a : b; } };

// Inclusive prefix sum over the block; *total gets the block's sum.
__device__ float block_scan(float x, float* sh, float* total) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    for (int o = 1; o < 32; o <<= 1) {
        float y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31) sh[warp] = x;
    __syncthreads();
    if (warp == 0) {
        float w = lane < warps ? sh[lane] : 0.f;
        for (int o = 1; o < 32; o <<= 1) {
            float y = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += y;
        }
        sh[lane] = w;
    }
    __syncthreads();
    float off = warp > 0 ? sh[warp - 1] : 0.f;
    *total = sh[warps - 1];
    __syncthreads();
    return x + off;
}

// A cut-off in rank order: token i is inside when its key is above key, or equal with i <= idx.
struct Thr {
    uint32_t key;
    int idx;
};
__device__ __forceinline__ bool inside(uint32_t k, int i, Thr t) { return k > t.key || (k == t.key && i <= t.idx); }

__global__ void __launch_bounds__(SAMPLE_THREADS)
sample_kernel(float* logits, int vocab, const lp_sample_row* params, int32_t* words, lp_sample_result* results) {
    __shared__ Shared sh;
    __shared__ float s_raw;
    const lp_sample_row P = params[blockIdx.x];
    float* l = logits + (size_t)blockIdx.x * vocab;
    lp_sample_result* res = results + blockIdx.x;
    const int tid = threadIdx.x, nt = blockDim.x;
    const float ninf = -CUDART_INF_F;

    // 1. Raw log-sum-exp and top-N.
    float mx = ninf;
    for (int i = tid; i < vocab; i += nt) mx = fmaxf(mx, l[i]);
    mx = block_reduce(mx, sh.f, ninf, OpMax());
    float se = 0.f;
    for (int i = tid; i < vocab; i += nt) se += expf(l[i] - mx);
    se = block_reduce(se, sh.f, 0.f, OpSum());
    const float lse = mx + logf(se);
    int ntop = 0;
    unsigned long long prev = ~0ull;
    for (; ntop < P.logprobs; ntop++) {
        unsigned long long best = 0;
        for (int i = tid; i < vocab; i += nt) {
            unsigned long long k = rank_key(l[i], i);
            if (k < prev && k > best) best = k;
        }
        best = block_reduce(best, sh.k, 0ull, OpMax());
        if (best == 0) break;
        if (tid == 0) {
            int t = rank_index(best);
            res->top[ntop].token = t;
            res->top[ntop].logprob = l[t] - lse;
        }
        prev = best;
    }

    // 2. Save raw values, then ban and penalise.
    int32_t* hist = words + P.hist;
    int32_t* ban = words + P.banned;
    for (int j = tid; j < P.num_hist; j += nt) {
        int t = hist[3 * j];
        if (t >= 0 && t < vocab) hist[3 * j + 2] = __float_as_int(l[t]);
    }
    for (int j = tid; j < P.num_banned; j += nt) {
        int t = ban[2 * j];
        if (t >= 0 && t < vocab) ban[2 * j + 1] = __float_as_int(l[t]);
    }
    __syncthreads();
    for (int j = tid; j < P.num_banned; j += nt) {
        int t = ban[2 * j];
        if (t >= 0 && t < vocab) l[t] = ninf;
    }
    __syncthreads();
    const float rp = P.repetition;
    for (int j = tid; j < P.num_hist; j += nt) {
        int t = hist[3 * j], c = hist[3 * j + 1];
        if (t < 0 || t >= vocab) continue;
        float v = l[t];
        if (rp != 0.f && rp != 1.f) v = v > 0.f ? __fdiv_rn(v, rp) : __fmul_rn(v, rp);
        if (c > 0) v = __fsub_rn(v, __fadd_rn(__fmul_rn(P.frequency, (float)c), P.presence));
        l[t] = v;
    }
    __syncthreads();

    // 3. Choose.
    int tok = -1;
    float m2 = ninf;
    int cand = 0;
    if (P.temperature >= 1e-5f) {
        for (int i = tid; i < vocab; i += nt) {
            float v = l[i];
            if (v != ninf) {
                m2 = fmaxf(m2, v);
                cand++;
            }
        }
        m2 = block_reduce(m2, sh.f, ninf, OpMax());
        cand = block_reduce(cand, sh.i, 0, OpSum());
    }
    if (P.temperature < 1e-5f || cand == 0) {
        unsigned long long best = 0;
        for (int i = tid; i < vocab; i += nt) {
            unsigned long long k = rank_key(l[i], i);
            if (k > best) best = k;
        }
        tok = rank_index(block_reduce(best, sh.k, 0ull, OpMax()));
    } else {
        const float invT = __fdiv_rn(1.f, P.temperature);
        auto prob = [&](float v) { return expf(__fmul_rn(__fsub_rn(v, m2), invT)); };
        // cut: the highest-ranked threshold whose set satisfies pred; eval(t) is a block
        // reduction every thread calls with the same t.
        auto cut = [&](auto eval) {
            unsigned long long lo = 0, hi = 0xFFFFFFFFull;
            while (lo < hi) {
                unsigned long long mid = lo + (hi - lo + 1) / 2;
                if (eval(Thr{(uint32_t)mid, vocab})) lo = mid;
                else hi = mid - 1;
            }
            // Tied logits at the cut: search the index between the first and last of them.
            int first = vocab, last = -1;
            for (int i = tid; i < vocab; i += nt) {
                if (l[i] != ninf && order_key(l[i]) == (uint32_t)lo) {
                    first = min(first, i);
                    last = max(last, i);
                }
            }
            first = block_reduce(first, sh.i, vocab, OpMin());
            last = block_reduce(last, sh.i, -1, OpMax());
            int ilo = first, ihi = last;
            while (ilo < ihi) {
                int mid = (ilo + ihi) / 2;
                if (eval(Thr{(uint32_t)lo, mid})) ihi = mid;
                else ilo = mid + 1;
            }
            return Thr{(uint32_t)lo, ilo};
        };
        const Thr all{0u, vocab};
        Thr kt = all, pt = all;
        if (P.top_k > 0 && P.top_k < cand) {
            kt = cut([&](Thr t) {
                int n = 0;
                for (int i = tid; i < vocab; i += nt) {
                    float v = l[i];
                    n += (v != ninf && inside(order_key(v), i, t)) ? 1 : 0;
                }
                return block_reduce(n, sh.i, 0, OpSum()) >= P.top_k;
            });
        }
        if (P.top_p > 0.f && P.top_p < 1.f) {
            float total = 0.f;
            for (int i = tid; i < vocab; i += nt) {
                float v = l[i];
                if (v != ninf && inside(order_key(v), i, kt)) total += prob(v);
            }
            total = block_reduce(total, sh.f, 0.f, OpSum());
            const float target = P.top_p * total;
            pt = cut([&](Thr t) {
                float s = 0.f;
                for (int i = tid; i < vocab; i += nt) {
                    float v = l[i];
                    uint32_t k = order_key(v);
                    if (v != ninf && inside(k, i, kt) && inside(k, i, t)) s += prob(v);
                }
                return block_reduce(s, sh.f, 0.f, OpSum()) >= target;
            });
        }
        auto kept_prob = [&](int i) {
            if (i >= vocab) return 0.f;
            float v = l[i];
            uint32_t k = order_key(v);
            if (v == ninf || !inside(k, i, kt) || !inside(k, i, pt)) return 0.f;
            float p = prob(v);
            return (P.min_p > 0.f && !(p >= P.min_p)) ? 0.f : p;
        };
        float sum = 0.f;
        int lastKept = -1;
        for (int i = tid; i < vocab; i += nt) {
            float p = kept_prob(i);
            if (p > 0.f) {
                sum += p;
                lastKept = i;
            }
        }
        sum = block_reduce(sum, sh.f, 0.f, OpSum());
        lastKept = block_reduce(lastKept, sh.i, -1, OpMax());
        const float target = P.u * sum;
        float running = 0.f;
        for (int base = 0; base < vocab && tok < 0; base += nt) {
            int i = base + tid;
            float p = kept_prob(i);
            float total;
            float incl = block_scan(p, sh.f, &total);
            int hit = (p > 0.f && running + incl > target) ? i : vocab;
            hit = block_reduce(hit, sh.i, vocab, OpMin());
            if (hit < vocab) tok = hit;
            running += total;
        }
        if (tok < 0) tok = lastKept >= 0 ? lastKept : 0;
    }

    // 4. The chosen token's raw logprob.
    if (tid == 0) s_raw = l[tok];
    __syncthreads();
    for (int j = tid; j < P.num_hist; j += nt)
        if (hist[3 * j] == tok) s_raw = __int_as_float(hist[3 * j + 2]);
    for (int j = tid; j < P.num_banned; j += nt)
        if (ban[2 * j] == tok) s_raw = __int_as_float(ban[2 * j + 1]);
    __syncthreads();
    if (tid == 0) {
        res->token = tok;
        res->logprob = P.logprobs >= 0 ? s_raw - lse : 0.f;
        res->num_top = ntop;
    }
}

extern "C" int lp_sample(float* logits, int rows, int vocab, const lp_sample_row* params, int32_t* words,
                         lp_sample_result* results, lp_stream s) {
    if (rows <= 0 || vocab <= 0 || !logits || !params || !words || !results) return (int)cudaErrorInvalidValue;
    sample_kernel<<<rows, SAMPLE_THREADS, 0, as_stream(s)>>>(logits, vocab, params, words, results);
    LP_CHECK_LAUNCH();
}
