// Logits processing and sampling on the device: one block per logits row chooses the row's next
// token (and its raw logprobs), so only a few bytes per row go back to the host instead of the
// whole row. model.SampleReference (model/sample.go) defines what this computes; the steps
// below follow it one for one, with the same arithmetic (sample_exp is model.SampleExp, masses
// are model.SampleMass integers, so parallel sums equal the reference's loop exactly):
//   1. log-sum-exp of the raw logits; the top-N raw logprobs by N block argmax passes, each
//      taking the best token ranked after the previous pick in (value desc, index asc) order;
//   2. raw values of the history, banned and biased tokens are saved (for the chosen token's
//      logprob), then the tokens outside a constrained row's allowed bitmap and the banned ids
//      get -inf, the logit_bias entries are added, and history tokens get the repetition and
//      frequency/presence penalties (in place: the logits buffer is scratch once the forward
//      pass is done);
//   3. greedy rows: block argmax (first index on ties, like the host);
//      other rows: p = sample_exp((l - max) / T) evaluated on the fly, its mass an integer;
//      the top-k and top-p cut-offs are
//      thresholds in the same rank order: top-k's key by radix select (exact counts), top-p's
//      by binary search over the logit's ordered bits (each probe a block sum of the top-k
//      survivors' mass), then, among tied logits, the index by binary search; when top-k
//      leaves at most 1024 tokens they are compacted into shared memory (in index order) and
//      top-p, min-p and the draw run there; min-p keeps p >= min_p;
//   4. the token: a walk over the kept tokens in index order, with a block-wide prefix sum per
//      1024 indices, stopping where the running mass exceeds u * mass(kept).
// The CPU backend computes the same definition (model.Sampler), so with the same logits and u a
// row picks the same token on both backends.
//
// Constrained decoding and logit_bias live here, in the one sampler, rather than in a kernel
// of their own before it:
//   - The mask is a bitmap, 1 bit per token (16 KB for a 128k vocabulary against 512 KB as
//     floats), uploaded only for the rows that have one (a row's offset is -1 otherwise) and
//     only once per distinct mask (rows in the same grammar state share it). A warp's 32
//     consecutive tokens read one 32-bit word, so applying it is one coalesced pass over a
//     constrained row with a broadcast load per warp; unconstrained rows skip it.
//   - Applied in this kernel, between the raw logprobs (which, as in vLLM, ignore it) and the
//     max, top-k, top-p, min-p and the draw, it is the same step as the bans, in the same order
//     as model.banAndPenalize: a separate launch would read and write every constrained row
//     once more and need its own ordering with the raw-logit bookkeeping.
//   - logit_bias is sparse (at most model.MaxSampleBias entries per row), so it travels as
//     {token, bias, raw} entries in the rows' words like the history and the bans.
// All of it sits in buffers at fixed device addresses, grown only when a step needs more than
// ever before and never per step (cuda/sample.go): the launch's arguments are the same from
// step to step and only their contents change, as a recorded graph's replay requires (Sample
// runs after the step's graph today; the layout keeps that door open).
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
template <typename T>
__device__ T block_scan(T x, T* sh, T* total) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    for (int o = 1; o < 32; o <<= 1) {
        T y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31) sh[warp] = x;
    __syncthreads();
    if (warp == 0) {
        T w = lane < warps ? sh[lane] : (T)0;
        for (int o = 1; o < 32; o <<= 1) {
            T y = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += y;
        }
        sh[lane] = w;
    }
    __syncthreads();
    T off = warp > 0 ? sh[warp - 1] : (T)0;
    *total = sh[warps - 1];
    __syncthreads();
    return x + off;
}

// model.SampleExp: e^x for x <= 0, every step a float32 operation rounded on its own (the _rn
// intrinsics are never fused), constants as the same bit patterns, so the bits equal Go's.
__device__ __forceinline__ float sample_exp(float x) {
    if (!(x >= -86.f)) return 0.f;
    const float k = floorf(__fadd_rn(__fmul_rn(x, __int_as_float(0x3fb8aa3b)), 0.5f));
    float r = __fsub_rn(x, __fmul_rn(k, __int_as_float(0x3f317200)));
    r = __fsub_rn(r, __fmul_rn(k, __int_as_float(0x35bfbe8e)));
    float q = __int_as_float(0x3ab60b61);                   // 1/720
    q = __fadd_rn(__int_as_float(0x3c088889), __fmul_rn(r, q)); // 1/120
    q = __fadd_rn(__int_as_float(0x3d2aaaab), __fmul_rn(r, q)); // 1/24
    q = __fadd_rn(__int_as_float(0x3e2aaaab), __fmul_rn(r, q)); // 1/6
    q = __fadd_rn(0.5f, __fmul_rn(r, q));
    q = __fadd_rn(1.f, __fmul_rn(r, q));
    q = __fadd_rn(1.f, __fmul_rn(r, q));
    return __fmul_rn(q, __int_as_float(((int)k + 127) << 23));
}

// model.SampleMass: p in units of 2^-40, truncated (exact: p * 2^40 is exact in double).
__device__ __forceinline__ unsigned long long sample_mass(float p) {
    return (unsigned long long)((double)p * 1099511627776.0);
}

// floor(f * m) in double, as model's scaleMass.
__device__ __forceinline__ unsigned long long scale_mass(float f, unsigned long long m) {
    return (unsigned long long)((double)f * (double)m);
}

// A cut-off in rank order: token i is inside when its key is above key, or equal with i <= idx.
struct Thr {
    uint32_t key;
    int idx;
};
__device__ __forceinline__ bool inside(uint32_t k, int i, Thr t) { return k > t.key || (k == t.key && i <= t.idx); }

__global__ void __launch_bounds__(SAMPLE_THREADS)
sample_kernel(float* logits, int vocab, const lp_sample_row* params, int32_t* words, const uint32_t* allowed,
              lp_sample_result* results) {
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

    // 2. Save raw values, then mask, ban, bias and penalise (model.banAndPenalize's order).
    int32_t* hist = words + P.hist;
    int32_t* ban = words + P.banned;
    int32_t* bias = words + P.bias;
    for (int j = tid; j < P.num_hist; j += nt) {
        int t = hist[3 * j];
        if (t >= 0 && t < vocab) hist[3 * j + 2] = __float_as_int(l[t]);
    }
    for (int j = tid; j < P.num_banned; j += nt) {
        int t = ban[2 * j];
        if (t >= 0 && t < vocab) ban[2 * j + 1] = __float_as_int(l[t]);
    }
    for (int j = tid; j < P.num_bias; j += nt) {
        int t = bias[3 * j];
        if (t >= 0 && t < vocab) bias[3 * j + 2] = __float_as_int(l[t]);
    }
    __syncthreads();
    if (P.allowed >= 0) {
        const uint32_t* mask = allowed + P.allowed;
        for (int i = tid; i < vocab; i += nt)
            if (!((mask[i >> 5] >> (i & 31)) & 1u)) l[i] = ninf;
    }
    for (int j = tid; j < P.num_banned; j += nt) {
        int t = ban[2 * j];
        if (t >= 0 && t < vocab) l[t] = ninf;
    }
    __syncthreads();
    // A token's entries are added in list order (rounded one by one, as the host adds them) by
    // the thread of its first entry, so a repeated token is neither raced on nor reordered.
    for (int j = tid; j < P.num_bias; j += nt) {
        const int t = bias[3 * j];
        if (t < 0 || t >= vocab) continue;
        bool first = true;
        for (int k = 0; k < j && first; k++) first = bias[3 * k] != t;
        if (!first) continue;
        float v = l[t];
        for (int k = j; k < P.num_bias; k++)
            if (bias[3 * k] == t) v = __fadd_rn(v, __int_as_float(bias[3 * k + 1]));
        l[t] = v;
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
        __shared__ int c_idx[SAMPLE_THREADS];
        __shared__ float c_val[SAMPLE_THREADS];
        __shared__ int s_hist[256];
        __shared__ int s_pick[2];
        const float invT = __fdiv_rn(1.f, P.temperature);
        auto prob = [&](float v) { return sample_exp(__fmul_rn(__fsub_rn(v, m2), invT)); };
        // The tokens the cut-offs look at: the whole row, or, once top-k has left at most
        // SAMPLE_THREADS of them, those compacted in index order into shared memory.
        int n = vocab;
        bool compact = false;
        auto elem = [&](int j, int& i) -> float {
            if (compact) {
                i = c_idx[j];
                return c_val[j];
            }
            i = j;
            return l[j];
        };
        // ties: among the tokens whose key is key, the lowest index idx for which eval({key,
        // idx}) holds (eval is a block reduction every thread calls with the same argument).
        auto ties = [&](uint32_t key, auto eval) {
            int first = vocab, last = -1;
            for (int j = tid; j < n; j += nt) {
                int i;
                float v = elem(j, i);
                if (v != ninf && order_key(v) == key) {
                    first = min(first, i);
                    last = max(last, i);
                }
            }
            first = block_reduce(first, sh.i, vocab, OpMin());
            last = block_reduce(last, sh.i, -1, OpMax());
            int ilo = first, ihi = last;
            while (ilo < ihi) {
                int mid = (ilo + ihi) / 2;
                if (eval(Thr{key, mid})) ihi = mid;
                else ilo = mid + 1;
            }
            return Thr{key, ilo};
        };
        // cut: the highest-ranked threshold whose set satisfies eval, by bisection over the key.
        auto cut = [&](auto eval) {
            unsigned long long lo = 0, hi = 0xFFFFFFFFull;
            while (lo < hi) {
                unsigned long long mid = lo + (hi - lo + 1) / 2;
                if (eval(Thr{(uint32_t)mid, vocab})) lo = mid;
                else hi = mid - 1;
            }
            return ties((uint32_t)lo, eval);
        };
        const Thr all{0u, vocab};
        Thr kt = all, pt = all;
        if (P.top_k > 0 && P.top_k < cand) {
            // The k-th largest key by radix select (four 8-bit digits, exact integer counts),
            // then the index among tied logits.
            uint32_t prefix = 0, mask = 0;
            int need = P.top_k;
            for (int shift = 24; shift >= 0; shift -= 8) {
                for (int d = tid; d < 256; d += nt) s_hist[d] = 0;
                __syncthreads();
                for (int i = tid; i < vocab; i += nt) {
                    float v = l[i];
                    if (v != ninf) {
                        uint32_t k = order_key(v);
                        if ((k & mask) == prefix) atomicAdd(&s_hist[(k >> shift) & 255u], 1);
                    }
                }
                __syncthreads();
                if (tid == 0) {
                    int acc = 0, d = 255;
                    for (; d > 0; d--) {
                        if (acc + s_hist[d] >= need) break;
                        acc += s_hist[d];
                    }
                    s_pick[0] = d;
                    s_pick[1] = need - acc;
                }
                __syncthreads();
                prefix |= (uint32_t)s_pick[0] << shift;
                mask |= 255u << shift;
                need = s_pick[1];
                __syncthreads();
            }
            kt = ties(prefix, [&](Thr t) {
                int c = 0;
                for (int i = tid; i < vocab; i += nt) {
                    float v = l[i];
                    c += (v != ninf && inside(order_key(v), i, t)) ? 1 : 0;
                }
                return block_reduce(c, sh.i, 0, OpSum()) >= P.top_k;
            });
            if (P.top_k <= SAMPLE_THREADS && nt == SAMPLE_THREADS) {
                int count = 0;
                for (int base = 0; base < vocab && count < P.top_k; base += nt) {
                    int i = base + tid;
                    bool f = false;
                    float v = 0.f;
                    if (i < vocab) {
                        v = l[i];
                        f = v != ninf && inside(order_key(v), i, kt);
                    }
                    float total;
                    int pos = count + (int)block_scan(f ? 1.f : 0.f, sh.f, &total) - 1;
                    if (f && pos < SAMPLE_THREADS) {
                        c_idx[pos] = i;
                        c_val[pos] = v;
                    }
                    count += (int)total;
                }
                __syncthreads();
                n = min(count, SAMPLE_THREADS);
                compact = true;
            }
        }
        if (P.top_p > 0.f && P.top_p < 1.f) {
            unsigned long long total = 0;
            for (int j = tid; j < n; j += nt) {
                int i;
                float v = elem(j, i);
                if (v != ninf && inside(order_key(v), i, kt)) total += sample_mass(prob(v));
            }
            total = block_reduce(total, sh.k, 0ull, OpSum());
            // At least 1: a top_p too small for the integer masses keeps the best token
            // (model.topPTarget).
            const unsigned long long share = scale_mass(P.top_p, total);
            const unsigned long long target = share > 0ull ? share : 1ull;
            pt = cut([&](Thr t) {
                unsigned long long s = 0;
                for (int j = tid; j < n; j += nt) {
                    int i;
                    float v = elem(j, i);
                    uint32_t k = order_key(v);
                    if (v != ninf && inside(k, i, kt) && inside(k, i, t)) s += sample_mass(prob(v));
                }
                return block_reduce(s, sh.k, 0ull, OpSum()) >= target;
            });
        }
        // kept_mass: position j's mass if the token is kept (0 otherwise); i its index.
        auto kept_mass = [&](int j, int& i) -> unsigned long long {
            i = vocab;
            if (j >= n) return 0ull;
            float v = elem(j, i);
            uint32_t k = order_key(v);
            if (v == ninf || !inside(k, i, kt) || !inside(k, i, pt)) return 0ull;
            float p = prob(v);
            return (P.min_p > 0.f && !(p >= P.min_p)) ? 0ull : sample_mass(p);
        };
        unsigned long long sum = 0;
        int lastKept = -1;
        for (int j = tid; j < n; j += nt) {
            int i;
            unsigned long long m = kept_mass(j, i);
            if (m > 0) {
                sum += m;
                lastKept = max(lastKept, i);
            }
        }
        sum = block_reduce(sum, sh.k, 0ull, OpSum());
        lastKept = block_reduce(lastKept, sh.i, -1, OpMax());
        const unsigned long long target = scale_mass(P.u, sum);
        unsigned long long running = 0;
        for (int base = 0; base < n && tok < 0; base += nt) {
            int i;
            unsigned long long m = kept_mass(base + tid, i);
            unsigned long long total;
            unsigned long long incl = block_scan(m, sh.k, &total);
            int hit = (m > 0 && running + incl > target) ? i : vocab;
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
    for (int j = tid; j < P.num_bias; j += nt)
        if (bias[3 * j] == tok) s_raw = __int_as_float(bias[3 * j + 2]);
    __syncthreads();
    if (tid == 0) {
        res->token = tok;
        res->logprob = P.logprobs >= 0 ? s_raw - lse : 0.f;
        res->num_top = ntop;
    }
}

extern "C" int lp_sample(float* logits, int rows, int vocab, const lp_sample_row* params, int32_t* words,
                         const uint32_t* allowed, lp_sample_result* results, lp_stream s) {
    if (rows <= 0 || vocab <= 0 || !logits || !params || !words || !results) return (int)cudaErrorInvalidValue;
    sample_kernel<<<rows, SAMPLE_THREADS, 0, as_stream(s)>>>(logits, vocab, params, words, allowed, results);
    LP_CHECK_LAUNCH();
}
