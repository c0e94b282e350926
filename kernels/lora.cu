// LoRA over a batch whose rows use different adapters: y[rows of s] += scale_s · B_s (A_s x).
//
// Punica's SGMV idea in two launches for all segments at once. Each segment names its own A
// and B (pointers into wherever the adapter lives) and its own rank, so nothing is padded to a
// maximum rank and adapters need not be stacked in one tensor. A decode segment is a single
// row (BGMV); a prefill segment is many rows of one sequence (SGMV).
//   shrink: grid (row, segment, rank group): each warp owns one rank index j and computes
//           t[row, j] = x[row] · A[j] with lanes striding the input dimension.
//   expand: grid (row, segment, column chunk): the row's t (rank floats) goes to shared
//           memory, threads take output columns of their chunk and add scale · (t · B[c]).
//           Chunking the columns keeps all SMs busy when a decode batch has few segments.
// Segments must cover disjoint rows (expand adds without atomics).
//
// lp_lora_routed is the router's variant (route.cu): every row has k single-row segments, one
// per chosen expert, stored row-major (segs[i*k + p] is row i's p-th choice, each with its own
// scratch offset). Its rows overlap k-fold, so the plain expand would race on them. Two ways
// out, and why this file takes the second:
//   - atomicAdd in the expand: one launch, but float addition is not associative and the
//     order the k blocks of a row land in varies run to run, so a routed row's result could
//     differ in its last bits between two identical steps (and between a CUDA graph replay and
//     the direct run it recorded). Tests would have to loosen, and reproducibility is lost.
//   - a row-major expand (chosen): one block per (row, column chunk) takes that row's k
//     segments itself, in pass order, and adds them into a register before a single store. No
//     two blocks touch the same output element, so no atomics, and the sum order is fixed:
//     out + s0*d0 + s1*d1 + ..., exactly the order of the k separate launches it replaces and
//     of the host path. It is as much one launch as the atomic version, reads the output once
//     instead of k times, and its block count (rows x chunks) is what one pass had before.
// The shrink needs no change of idea: segments write disjoint scratch, so it runs over all
// rows x k segments in one launch (segment index in grid x, which is not capped at 65535).
//
// lp_lora_group (issue 15, item 3) serves projections that read one input: q/k/v read the normed
// hidden state, and so do gate/up. Their segments go into one table, group after group, and
// one shrink launch computes every t = A x of all of them (x read once into L1/L2 for all three,
// each adapter's A factors read once per step, as before) and one expand launch adds every
// delta, each group into its own output: 2 launches for q/k/v instead of 6, 2 for gate/up
// instead of 4, so a decode layer with adapters on all seven projections makes 8 LoRA launches
// instead of 14. Decode's shrink grid (rows x segments x rank/4 blocks) is three times larger,
// which is what a 64-row, rank-16 step needs to keep enough loads in flight. Per output element
// the arithmetic is the plain launch's (expand_block is shared), so results are bitwise those
// of the separate launches; no atomics, and the launch shape depends on the segment layout
// only (part of the step key), so recorded graphs stay valid.
// Expanding into the base product's output: the expand already adds into the output the GEMM
// wrote (orow[c] += ...), so there is no separate delta buffer and no extra pass beyond that
// read-modify-write, n x out x 8 bytes per projection (a quarter of a rank-16 segment's B
// bytes at out = 4096). Folding it into the GEMM's epilogue needs our own GEMM for batch 64
// (cuBLAS takes none); not done here.
// The byte-bound ceiling of adapters ÷ no adapters at batch 64 is W / (W + A): a step must read
// the weights W once and every row's adapter factors A once. Llama-3-8B shape, rank 16 on all
// seven projections: r·(in + out)·2 bytes per projection = 2.62 MB per layer per adapter,
// 84 MB over 32 layers, 5.37 GB for 64 distinct adapters beside W = 16.1 GB: 0.75. Rank-8 q/v
// only (S-LoRA's setting): 0.21 MB per layer per adapter, 0.44 GB for 64: 16.1 / 16.54 = 0.97.
// Switch: LORAPLEX_LORA_GROUP=on|off (cuda.New), Backend.SetLoRAGroup.
//
// lp_lora_wide and lp_lora_group_wide (issue 15, item 3; LORAPLEX_LORA_WIDE=on|off, on by
// default since goals-2026-12-07-ab3, Backend.SetLoRAWide) are the same two launches on kernels shaped for a decode batch
// where each row has its own adapter: 64 independent rank-16 GEMVs per projection, 8 MB of
// distinct A and as much B at 4,096 x 4,096, which measured ~0.87 TB/s on the plain kernels
// (6.2 ms of a step for 5.4 GB of factors; copy bandwidth ~3 TB/s). What the plain kernels do
// that costs: the shrink gives each warp one rank index of one row, so x (fp32, twice the
// bytes of an A row) is read once per rank index and a warp keeps at most four 16-byte A loads
// in flight; the expand stores each column before it loads the next (a store to out may alias
// B for the compiler), about two loads in flight per thread.
//   shrink: grid (row, segment, split): a block of 128 threads takes one k-slice of one row
//           (splits of ~1,024 inputs, as many as keep rows x splits within 1,024 blocks: 4 at
//           4,096 and 14 at 14,336 for 64 rows, 256 and 896 blocks; the rule is in Go,
//           cuda.loraWideLayout). Each thread reads its 8 inputs of x once and issues the 16
//           A loads of a rank tile (16 rank indices, 16 bytes each) before using any; ranks
//           above 16 take further tiles. The slice's sums go to its own copy of the scratch.
//   expand: grid (row, segment, 512-column chunk): t is the sum of the row's partials; each
//           thread takes 4 columns 128 apart and loads their outputs and B vectors before any
//           arithmetic, then stores each column once.
// Determinism: no atomics. A rank index's sum adds a thread's slice in k order, the lanes by
// the butterfly of warp_sum, the 4 warps in order, then the splits in order in the expand; the
// split count depends on the projection's width and the segment layout only, so every run of
// the same step gives the same bits. Not bitwise the plain kernels (another summation order in
// the shrink; per column the expand's arithmetic is expand_dot's), and a row's bits follow
// its batch's size through the split count, so deterministic mode keeps the plain kernels.
// Graph replay: the grid and the split stride are functions of the step key's segment count,
// largest rows and rank (cuda.loraWideLayout); segment tables are copied before each replay.
// Tolerance: against the CPU within the LoRA sweep's 2e-3 of the largest output, against the
// plain kernels within fp32 rounding (TestLoRAWideSweep: 1e-5).
//
// lp_route_lora_group_wide (LORAPLEX_ROUTED_GROUP=on|off, cuda.RouteLoRAGroup) is lp_route_lora_wide
// for the routed projections of one input (q/k/v, gate/up) in one shrink and one expand launch,
// member m in grid y (shrink) and z (expand): a routed decode layer makes 8 launches instead of
// 14. Nsight Compute on a batch-1 routed step (bench/results/gpu-h100/goals-2026-12-07-s25c/
// prof-routed1.txt) has each routing shrink at 12-13 us and each routed expand at 7-8 us for a
// few KB of factors, latency the members' blocks now share. Each member keeps its own routing,
// segment table and scratch; the split count and stride are the group's (its most choices a row
// and largest rank: cuda.routedWideLayout), so a member's last bits may differ from its own
// launch's, within the routed tests' bounds. Determinism and graph replay as
// lp_route_lora_wide's (the launch shape is a function of the routings and the row count).
//
// Routing shrink by rows (LORAPLEX_ROUTED_ROWS=on|off; lp_route_lora_group_wide's rows flag,
// cuda.routedRowsTakes): the routing shrink gives each (row, choice, split) a block, and each of
// them routes its row again (thread 0's serial top-k and softmax) before a short slice of the
// shrink. At batch 64 q/k/v's launch is 64 x 2 x 3 x 4 = 1,536 such blocks, ~3 waves, and took
// 31 us against 9 us for the plain shrink of 64 adapters (goals-2026-12-07-s27a call 2, Nsight);
// gate/up's 22 us, four routing shrinks ~90 us of a routed layer. With rows on, where a call
// has at least as many (row, member) pairs as the rule asks (about half the SMs), a block takes
// one row of one member: it routes the row once and then shrinks each real choice over the
// whole input (one split), n x members blocks in one wave, the routing done once a row instead
// of passes x splits times. The expand is the group's, reading one split. The same routing,
// segments and trace to the bit; the intermediates are the same sums over one slice instead of
// several (within fp32 rounding of the split ones, the routed tests' bounds). Determinism and
// graph replay as the split launch's: the grid is a function of the row and member counts.
//
// Routed fold (LORAPLEX_ROUTED_FOLD=on|off, cuda.RoutedFoldedProducts): at batch 1 every expert's
// shrink rides the base products' GEMV launch beside the gate (lp_gemv_parts' wtab: 28 rank-8
// experts are 224 more columns, ~0.5 MB of A factors a projection, ~17 MB a layer beside 436 MB
// of weights), so no routing shrink launch remains; lp_route_fold_expand then routes each row
// from the logits and adds its choices from the dense shrinks, one launch for the members of a
// group. Nsight Compute put a routing shrink at 12-13 us, 7 a layer (goals-2026-12-07-s25c/
// prof-routed1.txt). The arithmetic per choice is the routed expand's (expand_dot) on a shrink
// summed in the GEMV's order instead of the wide shrink's: within rounding of RouteLoRA, the same
// routing (the same logits reach route_row). No segment table: the launch shapes and every
// address are fixed by the step key (the routing's tables are content-addressed, route.go).
//
// Folded shrinks (LORAPLEX_LORA_FOLD=on|off, cuda.FoldedProducts): at batch 1 a projection
// group's one adapter costs two launches of its own beside the base products (shrink, expand),
// each latency-bound (a rank-8 q/k/v shrink reads 192 KB), and the RMSNorm before them could
// not fold into the products (the shrink read the normed state). Its A factors are matrices
// like the weights, so the shrink rides the base products' GEMV launch as more parts (rank
// columns each, 8 warps of a 6,144-column launch at q/k/v), on the normed input the GEMV forms
// anyway; lp_lora_group_expand then adds the deltas, one launch per group. The A addresses
// come from the segment table (lp_gemv_parts' wsrc), which a recorded step rewrites before each
// replay: one recording serves every adapter of that rank, as the unfolded launches do.
// Numerics: t = h · Aᵀ in the GEMV's order (a warp's lanes, then warp_sum) instead of the wide
// shrink's, the same fp32 products within rounding (TestLoRAFoldSweep: 1e-5 of the largest
// output against the unfolded launches); deterministic mode keeps the unfolded kernels.
// Measured on an H100 with the staged norm (bench/results/gpu-h100/goals-2026-12-07-s25b, -s25c):
// one rank-8 adapter at batch 1 1.07x (155.8 tok/s against 145.3, the base 168.7); on by
// default since.
//
// LoRA SwiGLU (LORAPLEX_LORA_SWIGLU=on|off, cuda.NormGateUpLoRASwiGLU): at more rows than the
// GEMV takes, the gate and up deltas went through the grouped expand, which reads and writes
// both products' outputs (at batch 64, 14.7 MB a layer of fp32 read-modify-write; at a 2,048-row
// prefill, 470 MB), and then SwiGLU read them again. lp_lora_swiglu runs the wide shrink of both
// groups, then one launch over (row, column chunk) that adds each row's deltas to the gate and
// up values it loads anyway and writes only the activation (fp32 for the down projection's own
// LoRA, bf16 for its GEMM): the expand's pass and its launch are gone. The block finds its row's
// segments itself (a group's rows are disjoint), so a row without an adapter costs the plain
// SwiGLU. Per element the arithmetic is the grouped wide expand's (wide_deltas) and
// lp_silu_mul_bf16's, so results are those of the grouped launches (TestLoRASwiGLU; the bounds
// allow the compiler another contraction of value + scale · delta into an FMA).
// Determinism and graph replay: the wide shrink's (split count and stride from the step key's
// segment layout), no atomics.
//
// LoRA RoPE (LORAPLEX_LORA_ROPE=on|off, cuda.NormQKVLoRARoPE): the same for q/k/v. Their
// grouped expand read and wrote the three products' outputs, and RoPE + KV store
// (decode_fused.cu) then read them again; lp_lora_rope_store_kv runs the wide shrink, then
// that launch with each row's deltas added to the values it loads (v's written back too, so the
// state it leaves is the unfused one's). A query head's block reads its 128 columns of B (4 KB
// at rank 16), the grouped expand's bytes spread over the RoPE grid. Arithmetic, determinism and
// graph replay as the LoRA SwiGLU's; Q/K norms (Qwen3) and q/k/v biases (Qwen2) come between
// the products and RoPE, so those models keep the separate launches.
//
// lp_lora_routed_wide (issue 15, item 3; LORAPLEX_ROUTED_WIDE=on|off, on by default since
// goals-2026-12-07-ab4, Backend.SetRoutedWide) is lp_lora_routed on the
// wide shrink. A routed decode row is k one-row segments: at batch 1, top-2 of rank 8, the
// plain shrink is 4 blocks of 4 warps (one warp per rank index) streaming 4,096 or 14,336
// inputs, a latency-bound launch that the single adapter's split-K made 1.18x faster.
//   shrink: lora_shrink_wide_kernel<VEC, ROUTED>, the single adapter's code: grid (segment =
//           row x k + choice, 1, split), a block per k-slice of one choice, the slice's sums
//           into split s's copy of the scratch (s x t_stride). The split rule is the wide
//           kernels' (cuda.wideLayout) over rows x k one-row segments: 4 splits at 4,096 and
//           14 at 14,336 for a batch-1 top-2 row; 4 and 8 for 64 rows.
//   expand: grid (row, 512-column chunk): each choice's t is the sum of its partials in split
//           order (split_sum, shared with the wide expand), then the row's choices add in pass
//           order as in lp_lora_routed, out + s0*d0 + s1*d1 + ..., per column and choice with
//           expand_dot's arithmetic; each thread takes 4 columns 128 apart and loads their
//           outputs and B vectors before any arithmetic, storing each column once after the
//           last choice (the wide expand's recipe).
// Determinism: no atomics; a choice's intermediate sums in the wide shrink's fixed order and
// its splits in order, so a step repeats bit for bit. The split count follows rows x k, so a
// row's last bits follow its batch: deterministic mode keeps lp_lora_routed.
// Graph replay: the grid and the stride are functions of the step's rows, the routing's top-k
// and its expert table's largest rank (cuda.routedWideLayout), all fixed by the step key; the
// route kernel inside the graph rewrites the segments it reads.
// Tolerance: against the host routing within the routed tests' 2e-3 of the row's largest delta
// (TestRouteLoRAMatchesHost, TestRoutedWideSweep), against lp_lora_routed within fp32 rounding.
//
// lp_route_lora_wide (LORAPLEX_ROUTED_FUSED=on|off with LORAPLEX_ROUTED_WIDE, on by default
// since goals-2026-12-07-ab4, Backend.SetRoutedFused) folds route.cu's kernel into that shrink, so a routed projection is
// two launches like a single adapter's (gate logits come from the base products' launch):
// thread 0 of every shrink block routes the block's row with route_row (route_row.cuh, the
// route kernel's own function) into shared memory while the other threads wait at a barrier;
// the block shrinks its choice, and the row's (choice 0, split 0) block writes the row's
// segments (for the expand) and its trace. Every block of a row routes the same logits with the
// same code, so they agree; a row's routing (k scans of at most 64 logits, k double exps) costs
// each block about what the separate route kernel's thread spent, in place of a launch.
// Determinism and graph replay as lp_lora_routed_wide's (the routing is the route kernel's,
// inside the same graph); its sums are lp_lora_routed_wide's bit for bit (TestRoutedWideSweep).
//
// lp_route_lora_group_em (LORAPLEX_ROUTED_EXPERT_MAJOR, Backend.SetRoutedExpertMajor) is the
// routed group at decode batches whose choices outnumber the experts: the row-major kernels
// give every (row, choice) its own shrink block and its own expand block, so each reads its
// expert's A and B again. At batch 64, top-2 of 28, rank 8, that is 128 reads of each gate/up
// B (229 KB) where 28 would do: 58 MB through L2 for one expand, 22.7 us, and the routing
// shrinks run 2-3 waves of blocks that each route their row again (goals-2026-12-07-s27a
// call 2, Nsight: 22-31 us where one adapter's shrinks take 6-9 us).
// The first version gave each expert one block (goals-2026-12-08-s28a: 0.56x of row-major at
// batch 64), so an expert many rows chose walked them all one after another; a random-weight
// model, like a real router, may send most of a batch to a few experts. So work is cut into
// chunks of at most LP_ROUTE_EM_ROWS choices of one pass and one expert, whatever the spread:
//   plan:   grid (member): the step's logits staged in shared memory, a thread routes each row
//           (route_row, into the member's segment table and the trace, as the routing shrinks
//           do), then the real choices are sorted by pass and expert (an adapter listed twice
//           is one expert) in row order and cut into chunks, into a plan in device memory.
//   shrink: grid (chunk, member, split): the block runs the wide shrink's block work
//           (shrink_wide_block) on its chunk's choices in turn, one expert's A slice read from
//           DRAM once and from L1 after.
//   expand: one launch per pass p, grid (chunk of pass p, wide column chunk, member): the block
//           adds its chunk's choices (distinct rows) with the wide routed expand's column
//           arithmetic (routed_expand_columns, one choice). Passes run in order, so a row gets
//           out + s0*d0, stored, then + s1*d1: the row-major expand's sums, bit for bit for the
//           same intermediates.
// Determinism: no atomics; counts, lists and chunks in fixed orders; the passes in order. Graph
// replay: grids from bounds of the step's rows, the routing's k, its largest expert count and
// the split rule (cuda.expertMajorLayout), all fixed by the step key; the plan is rewritten
// inside the graph, and chunks past its count exit at once.
// Tolerance: the same as the routed group's, which splits the input its own way.
#include "common.cuh"
#include "route_row.cuh"

#define SHRINK_WARPS 4

__device__ __forceinline__ float dot8(const uint4 v, const float4 a, const float4 b) {
    return a.x * __uint_as_float(v.x << 16) + a.y * __uint_as_float(v.x & 0xffff0000u) +
           a.z * __uint_as_float(v.y << 16) + a.w * __uint_as_float(v.y & 0xffff0000u) +
           b.x * __uint_as_float(v.z << 16) + b.y * __uint_as_float(v.z & 0xffff0000u) +
           b.z * __uint_as_float(v.w << 16) + b.w * __uint_as_float(v.w & 0xffff0000u);
}

// VEC: in_dim % 8 == 0 and 16-byte aligned rows, so lanes read 8 weights per load. Decode is
// latency-bound here (one skinny row per segment), and wide loads cut the load count 8x.
// ROUTED: one-row segments, the segment in grid x (rows x k can pass 65535), row 0 of it.
template <bool VEC, bool ROUTED>
__global__ void lora_shrink_kernel(const float* x, const lp_lora_seg* segs, float* scratch, int in_dim) {
    const lp_lora_seg sg = segs[ROUTED ? blockIdx.x : blockIdx.y];
    const int r = ROUTED ? 0 : blockIdx.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int j = blockIdx.z * SHRINK_WARPS + warp;
    if (r >= sg.n || j >= sg.rank) return;
    const float* xr = x + (size_t)(sg.start + r) * in_dim;
    const uint16_t* a = sg.a + (size_t)j * in_dim;
    float s = 0.f;
    if (VEC) {
        const uint4* av = reinterpret_cast<const uint4*>(a);
        const float4* xv = reinterpret_cast<const float4*>(xr);
        // Four of the lane's A vectors are loaded before any is used, so a decode segment's
        // warp has four 16-byte loads in flight instead of one per dependent step (the GEMV's
        // recipe, gemv.cu); the sum still adds vector after vector in the order of the plain
        // loop below, so every result is bitwise what it was.
        const int nv = in_dim / 8;
        int c = lane;
        for (; c + 96 < nv; c += 128) {
            const uint4 a0 = av[c], a1 = av[c + 32], a2 = av[c + 64], a3 = av[c + 96];
            s += dot8(a0, xv[2 * c], xv[2 * c + 1]);
            s += dot8(a1, xv[2 * (c + 32)], xv[2 * (c + 32) + 1]);
            s += dot8(a2, xv[2 * (c + 64)], xv[2 * (c + 64) + 1]);
            s += dot8(a3, xv[2 * (c + 96)], xv[2 * (c + 96) + 1]);
        }
        for (; c < nv; c += 32) s += dot8(av[c], xv[2 * c], xv[2 * c + 1]);
    } else {
        for (int c = lane; c < in_dim; c += 32) s += xr[c] * bf16_to_f32(a[c]);
    }
    s = warp_sum(s);
    if (lane == 0) scratch[sg.t_off + r * sg.rank + j] = s;
}

#define EXPAND_COLS 512

// acc = t · B[c] for one segment: a column's B row is rank contiguous bf16, read 8 at a time
// when rank % 8 == 0 and B is 16-byte aligned. Shared by both expands so that a routed row
// computes each choice's delta with exactly the arithmetic of a plain one-segment launch.
__device__ __forceinline__ float expand_dot(const uint16_t* bseg, int rank, bool vec, const float* t, int c) {
    const uint16_t* b = bseg + (size_t)c * rank;
    float acc = 0.f;
    if (vec) {
        const uint4* bv = reinterpret_cast<const uint4*>(b);
        for (int j = 0; j < rank / 8; j++)
            acc += dot8(bv[j], make_float4(t[8 * j], t[8 * j + 1], t[8 * j + 2], t[8 * j + 3]),
                        make_float4(t[8 * j + 4], t[8 * j + 5], t[8 * j + 6], t[8 * j + 7]));
    } else {
        for (int j = 0; j < rank; j++) acc += t[j] * bf16_to_f32(b[j]);
    }
    return acc;
}

__device__ __forceinline__ bool expand_vec(const lp_lora_seg& sg) {
    return (sg.rank % 8) == 0 && ((uintptr_t)sg.b % 16) == 0;
}

// expand_block is one expand block's work: row blockIdx.x of segment sg, columns of chunk
// blockIdx.z of out [rows, out_dim]. Shared by the plain and the grouped expand, so a grouped
// projection gets exactly the arithmetic of its own launch.
__device__ __forceinline__ void expand_block(float* out, int out_dim, const lp_lora_seg& sg, const float* scratch) {
    const int r = blockIdx.x;
    if (r >= sg.n) return;  // uniform over the block: no thread reaches the barrier
    __shared__ float t[LP_MAX_LORA_RANK];
    for (int j = threadIdx.x; j < sg.rank; j += blockDim.x) t[j] = scratch[sg.t_off + r * sg.rank + j];
    __syncthreads();
    float* orow = out + (size_t)(sg.start + r) * out_dim;
    const int c_end = min(out_dim, (int)(blockIdx.z + 1) * EXPAND_COLS);
    const bool vec = expand_vec(sg);
    for (int c = blockIdx.z * EXPAND_COLS + threadIdx.x; c < c_end; c += blockDim.x)
        orow[c] += sg.scale * expand_dot(sg.b, sg.rank, vec, t, c);
}

__global__ void lora_expand_kernel(float* out, const lp_lora_seg* segs, const float* scratch, int out_dim) {
    const lp_lora_seg sg = segs[blockIdx.y];
    expand_block(out, out_dim, sg, scratch);
}

// Grouped expand: segment blockIdx.y belongs to the first group whose end is past it; column
// chunks beyond that group's width (grid z covers the widest) exit at once.
__global__ void lora_expand_group_kernel(lp_lora_outs outs, const lp_lora_seg* segs, const float* scratch) {
    int g = 0;
    while (g + 1 < outs.groups && (int)blockIdx.y >= outs.end[g]) g++;
    const int out_dim = outs.out_dim[g];
    if ((int)blockIdx.z * EXPAND_COLS >= out_dim) return;  // uniform over the block
    const lp_lora_seg sg = segs[blockIdx.y];
    expand_block(outs.out[g], out_dim, sg, scratch);
}

// split_sum is intermediate j of a row whose partials lie splits apart by t_stride: the sum of
// its splits' partials in split order (the wide shrink's; one split is the partial itself,
// bit for bit, which is what the plain shrink's single copy of the scratch gives).
__device__ __forceinline__ float split_sum(const float* part, int j, int splits, int t_stride) {
    float v = part[j];
    for (int s = 1; s < splits; s++) v += part[(size_t)s * t_stride + j];
    return v;
}

// routed_row_load puts row blockIdx.x's k segments segs[i*k .. i*k+k-1] in sg and each real
// choice's t (the sum of its split partials, split_sum: splits 1 after the plain shrink, the
// wide shrink's count after lp_lora_routed_wide's) in t, both shared; false, uniformly over the
// block, when the row has no real choice. Every routed expand starts with it.
__device__ __forceinline__ bool routed_row_load(const lp_lora_seg* segs, const float* scratch, int k, int splits, int t_stride,
                                                lp_lora_seg* sg, float (*t)[LP_MAX_LORA_RANK]) {
    const lp_lora_seg* row_segs = segs + (size_t)blockIdx.x * k;
    if ((int)threadIdx.x < k) sg[threadIdx.x] = row_segs[threadIdx.x];
    __syncthreads();
    bool any = false;
    for (int p = 0; p < k; p++) any |= sg[p].n > 0;
    if (!any) return false;  // uniform over the block (shared values): no thread reaches the barrier
    for (int p = 0; p < k; p++)
        if (sg[p].n > 0)
            for (int j = threadIdx.x; j < sg[p].rank; j += blockDim.x)
                t[p][j] = split_sum(scratch + sg[p].t_off, j, splits, t_stride);
    __syncthreads();
    return true;
}

// Row-major routed expand: grid (row, column chunk); the block adds row i's k segments
// segs[i*k .. i*k+k-1] in that order (see the top of the file for why not atomics). Every
// segment of a row names the same output row (segs[i*k].start); N = 0 marks an absent choice.
__global__ void lora_expand_routed_kernel(float* out, const lp_lora_seg* segs, const float* scratch, int k, int out_dim,
                                          int splits, int t_stride) {
    __shared__ lp_lora_seg sg[LP_ROUTE_MAX_K];
    __shared__ float t[LP_ROUTE_MAX_K][LP_MAX_LORA_RANK];
    if (!routed_row_load(segs, scratch, k, splits, t_stride, sg, t)) return;
    float* orow = out + (size_t)sg[0].start * out_dim;
    const int c_end = min(out_dim, (int)(blockIdx.y + 1) * EXPAND_COLS);
    for (int c = blockIdx.y * EXPAND_COLS + threadIdx.x; c < c_end; c += blockDim.x) {
        float v = orow[c];
        for (int p = 0; p < k; p++)
            if (sg[p].n > 0) v += sg[p].scale * expand_dot(sg[p].b, sg[p].rank, expand_vec(sg[p]), t[p], c);
        orow[c] = v;
    }
}

extern "C" int lp_lora(float* out, const float* x, const lp_lora_seg* segs_device, int num_segs, int max_rows, int max_rank,
                       float* scratch, int in_dim, int out_dim, int phases, lp_stream s) {
    if (num_segs <= 0) return 0;
    if (max_rows <= 0 || max_rank <= 0 || max_rank > LP_MAX_LORA_RANK || num_segs > 65535 ||
        (phases & ~(LP_LORA_SHRINK | LP_LORA_EXPAND)) != 0)
        return (int)cudaErrorInvalidValue;
    if (phases & LP_LORA_SHRINK) {
        dim3 g1(max_rows, num_segs, (max_rank + SHRINK_WARPS - 1) / SHRINK_WARPS);
        // Vector loads need 16-byte aligned A rows: in_dim % 8 == 0 (cudaMalloc'd A is aligned) and x.
        if (in_dim % 8 == 0 && ((uintptr_t)x % 16) == 0)
            lora_shrink_kernel<true, false><<<g1, 32 * SHRINK_WARPS, 0, as_stream(s)>>>(x, segs_device, scratch, in_dim);
        else
            lora_shrink_kernel<false, false><<<g1, 32 * SHRINK_WARPS, 0, as_stream(s)>>>(x, segs_device, scratch, in_dim);
    }
    if (phases & LP_LORA_EXPAND) {
        dim3 g2(max_rows, num_segs, (out_dim + EXPAND_COLS - 1) / EXPAND_COLS);
        lora_expand_kernel<<<g2, 256, 0, as_stream(s)>>>(out, segs_device, scratch, out_dim);
    }
    LP_CHECK_LAUNCH();
}

extern "C" int lp_lora_group(lp_lora_outs outs, const float* x, const lp_lora_seg* segs_device, int num_segs, int max_rows,
                             int max_rank, float* scratch, int in_dim, lp_stream s) {
    if (num_segs <= 0) return 0;
    if (outs.groups < 1 || outs.groups > LP_LORA_GROUP || outs.end[outs.groups - 1] != num_segs || max_rows <= 0 ||
        max_rank <= 0 || max_rank > LP_MAX_LORA_RANK || num_segs > 65535 || in_dim <= 0)
        return (int)cudaErrorInvalidValue;
    int chunks = 0;
    for (int g = 0; g < outs.groups; g++) {
        if (outs.out_dim[g] <= 0 || (g > 0 && outs.end[g] < outs.end[g - 1])) return (int)cudaErrorInvalidValue;
        const int c = (outs.out_dim[g] + EXPAND_COLS - 1) / EXPAND_COLS;
        if (c > chunks) chunks = c;
    }
    dim3 g1(max_rows, num_segs, (max_rank + SHRINK_WARPS - 1) / SHRINK_WARPS);
    if (in_dim % 8 == 0 && ((uintptr_t)x % 16) == 0)
        lora_shrink_kernel<true, false><<<g1, 32 * SHRINK_WARPS, 0, as_stream(s)>>>(x, segs_device, scratch, in_dim);
    else
        lora_shrink_kernel<false, false><<<g1, 32 * SHRINK_WARPS, 0, as_stream(s)>>>(x, segs_device, scratch, in_dim);
    dim3 g2(max_rows, num_segs, chunks);
    lora_expand_group_kernel<<<g2, 256, 0, as_stream(s)>>>(outs, segs_device, scratch);
    LP_CHECK_LAUNCH();
}

extern "C" int lp_lora_routed(float* out, const float* x, const lp_lora_seg* segs_device, int rows, int k, int max_rank,
                              float* scratch, int in_dim, int out_dim, lp_stream s) {
    if (rows <= 0) return 0;
    if (k < 1 || k > LP_ROUTE_MAX_K || rows > LP_LORA_ROUTED_MAX_ROWS || max_rank <= 0 || max_rank > LP_MAX_LORA_RANK ||
        in_dim <= 0 || out_dim <= 0 || (out_dim + EXPAND_COLS - 1) / EXPAND_COLS > 65535)
        return (int)cudaErrorInvalidValue;
    dim3 g1(rows * k, 1, (max_rank + SHRINK_WARPS - 1) / SHRINK_WARPS);
    if (in_dim % 8 == 0 && ((uintptr_t)x % 16) == 0)
        lora_shrink_kernel<true, true><<<g1, 32 * SHRINK_WARPS, 0, as_stream(s)>>>(x, segs_device, scratch, in_dim);
    else
        lora_shrink_kernel<false, true><<<g1, 32 * SHRINK_WARPS, 0, as_stream(s)>>>(x, segs_device, scratch, in_dim);
    dim3 g2(rows, (out_dim + EXPAND_COLS - 1) / EXPAND_COLS);
    lora_expand_routed_kernel<<<g2, 256, 0, as_stream(s)>>>(out, segs_device, scratch, k, out_dim, 1, 0);  // one split: t as before
    LP_CHECK_LAUNCH();
}

// The wide kernels (LORAPLEX_LORA_WIDE; the design is at the top of the file).

#define WIDE_THREADS 128
#define WIDE_RANK_TILE 16  // rank indices one shrink pass accumulates in registers
#define WIDE_EXPAND_PER_THREAD 4
#define WIDE_EXPAND_COLS (WIDE_THREADS * WIDE_EXPAND_PER_THREAD)

// Wide shrink: grid (row, segment, split). The block takes k-slice blockIdx.z of the input (in
// 16-byte vectors when VEC, else elements) and, for up to WIDE_RANK_TILE rank indices at a time,
// each thread reads its slice of x once into registers and issues the loads of all the tile's A
// rows before using any (16 independent 16-byte loads in flight per thread, where the plain
// shrink has four per warp and re-reads x once per rank index). The tile's sums reduce in a
// fixed order: a butterfly within each warp, then warp 0, 1, 2, 3 in turn, and the block writes
// its partial t to split blockIdx.z's copy of the scratch (the expand adds the splits in order).
// A block whose slice is empty (in_dim small against the splits) writes zeros, which the
// expand needs: every split's partial is read.
// shrink_wide_block is that work for row r of segment sg; every wide shrink kernel runs it.
template <bool VEC>
__device__ __forceinline__ void shrink_wide_block(const float* x, const lp_lora_seg& sg, int r, float* scratch, int in_dim,
                                                  int t_stride) {
    if (r >= sg.n) return;  // uniform over the block: no thread reaches the barriers
    const int units = VEC ? in_dim / 8 : in_dim;
    const int per = (units + (int)gridDim.z - 1) / (int)gridDim.z;
    const int begin = (int)blockIdx.z * per, end = min(units, begin + per);
    const float* xr = x + (size_t)(sg.start + r) * in_dim;
    float* part = scratch + (size_t)blockIdx.z * t_stride + sg.t_off + (size_t)r * sg.rank;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __shared__ float red[WIDE_THREADS / 32][WIDE_RANK_TILE];
    for (int j0 = 0; j0 < sg.rank; j0 += WIDE_RANK_TILE) {
        const int nj = min(WIDE_RANK_TILE, sg.rank - j0);
        const uint16_t* a = sg.a + (size_t)j0 * in_dim;
        float acc[WIDE_RANK_TILE];
#pragma unroll
        for (int jj = 0; jj < WIDE_RANK_TILE; jj++) acc[jj] = 0.f;
        for (int c = begin + threadIdx.x; c < end; c += WIDE_THREADS) {
            if (VEC) {
                const float4 x0 = reinterpret_cast<const float4*>(xr)[2 * c];
                const float4 x1 = reinterpret_cast<const float4*>(xr)[2 * c + 1];
                // A tile narrower than 16 (rank 8, the last tile of rank 20) reads its last row
                // again for the indices past it, from L1, so the loads need no predicates; those
                // sums are never reduced.
                uint4 av[WIDE_RANK_TILE];
#pragma unroll
                for (int jj = 0; jj < WIDE_RANK_TILE; jj++)
                    av[jj] = reinterpret_cast<const uint4*>(a + (size_t)min(jj, nj - 1) * in_dim)[c];
#pragma unroll
                for (int jj = 0; jj < WIDE_RANK_TILE; jj++) acc[jj] += dot8(av[jj], x0, x1);
            } else {
                const float xs = xr[c];
#pragma unroll
                for (int jj = 0; jj < WIDE_RANK_TILE; jj++)
                    if (jj < nj) acc[jj] += xs * bf16_to_f32(a[(size_t)jj * in_dim + c]);
            }
        }
#pragma unroll
        for (int jj = 0; jj < WIDE_RANK_TILE; jj++) {
            if (jj < nj) {  // uniform over the block: every lane of every warp shuffles
                const float v = warp_sum(acc[jj]);
                if (lane == 0) red[warp][jj] = v;
            }
        }
        __syncthreads();
        if ((int)threadIdx.x < nj) {
            float v = red[0][threadIdx.x];
            for (int w = 1; w < WIDE_THREADS / 32; w++) v += red[w][threadIdx.x];
            part[j0 + threadIdx.x] = v;
        }
        __syncthreads();  // red is reused by the next rank tile
    }
}

// ROUTED: one-row segments (lp_lora_routed_wide), the segment in grid x as in the plain routed
// shrink (rows x k can pass 65535), row 0 of it.
template <bool VEC, bool ROUTED>
__global__ void __launch_bounds__(WIDE_THREADS)
    lora_shrink_wide_kernel(const float* x, const lp_lora_seg* segs, float* scratch, int in_dim, int t_stride) {
    const lp_lora_seg sg = segs[ROUTED ? blockIdx.x : blockIdx.y];
    shrink_wide_block<VEC>(x, sg, ROUTED ? 0 : (int)blockIdx.x, scratch, in_dim, t_stride);
}

// Routing shrink (lp_route_lora_wide): grid (row x passes + choice, 1, split), as the routed
// wide shrink, but no route kernel ran before it: thread 0 of each block routes the block's row
// from its gate logits (route_row, the route kernel's own function, into shared memory) and the
// block shrinks its choice. Every block of a row computes the same routing from the same
// logits with the same code, so they agree bit for bit; the row's (choice 0, split 0) block
// alone writes the row's segments to the table the expand reads, and the trace.
// route_shrink_block is that work for block (row x passes + choice, ., split) of one routing.
template <bool VEC>
__device__ __forceinline__ void route_shrink_block(const lp_route_args& ra, const float* x, lp_lora_seg* segs, float* scratch,
                                                   int in_dim, int t_stride) {
    __shared__ lp_lora_seg row_segs[LP_ROUTE_MAX_K];
    __shared__ route_stage st;
    const int i = (int)blockIdx.x / ra.passes, p = (int)blockIdx.x % ra.passes;
    const bool writer = p == 0 && blockIdx.z == 0;
    const float* l = ra.logits + (size_t)i * ra.rows;
    const lp_route_expert* experts = ra.experts;
    route_staged(l, experts, ra.rows, ra.nulls, ra.staged, st);
    if (threadIdx.x == 0)
        route_row(l, i, ra.rows, ra.k, ra.temperature, ra.nulls, experts, row_segs, ra.passes,
                  ra.start, ra.seg_stride, writer ? ra.trace : nullptr, ra.trace_cols, ra.layer);
    __syncthreads();
    if (writer && (int)threadIdx.x < ra.passes) segs[(size_t)i * ra.passes + threadIdx.x] = row_segs[threadIdx.x];
    const lp_lora_seg sg = row_segs[p];
    shrink_wide_block<VEC>(x, sg, 0, scratch, in_dim, t_stride);
}

template <bool VEC>
__global__ void __launch_bounds__(WIDE_THREADS)
    route_shrink_wide_kernel(lp_route_args ra, const float* x, lp_lora_seg* segs, float* scratch, int in_dim, int t_stride) {
    route_shrink_block<VEC>(ra, x, segs, scratch, in_dim, t_stride);
}

// Grouped routing shrink (lp_route_lora_group_wide): route_shrink_wide_kernel for member
// blockIdx.y of a group of routed projections that read one x; grid x covers the group's most
// choices a row, so a member with fewer has blocks with nothing to do.
template <bool VEC>
__global__ void __launch_bounds__(WIDE_THREADS)
    route_shrink_group_kernel(lp_route_group g, const float* x, int in_dim, int t_stride) {
    const int m = blockIdx.y;
    if ((int)blockIdx.x >= g.n * g.ra[m].passes) return;  // uniform over the block
    route_shrink_block<VEC>(g.ra[m], x, g.segs[m], g.scratch[m], in_dim, t_stride);
}

// Routing shrink by rows (the design is at the top of the file): grid (row, member), one split.
template <bool VEC>
__global__ void __launch_bounds__(WIDE_THREADS) route_shrink_rows_kernel(lp_route_group g, const float* x, int in_dim) {
    __shared__ lp_lora_seg row_segs[LP_ROUTE_MAX_K];
    __shared__ route_stage st;
    const int i = blockIdx.x, m = blockIdx.y;
    const lp_route_args& ra = g.ra[m];
    const float* l = ra.logits + (size_t)i * ra.rows;
    const lp_route_expert* experts = ra.experts;
    route_staged(l, experts, ra.rows, ra.nulls, ra.staged, st);
    if (threadIdx.x == 0)
        route_row(l, i, ra.rows, ra.k, ra.temperature, ra.nulls, experts, row_segs, ra.passes, ra.start, ra.seg_stride, ra.trace,
                  ra.trace_cols, ra.layer);
    __syncthreads();
    if ((int)threadIdx.x < ra.passes) g.segs[m][(size_t)i * ra.passes + threadIdx.x] = row_segs[threadIdx.x];
    for (int p = 0; p < ra.passes; p++) {
        const lp_lora_seg sg = row_segs[p];
        shrink_wide_block<VEC>(x, sg, 0, g.scratch[m], in_dim, 0);  // a null choice (n 0) returns at once, block-wide
    }
}

// t8 is t[8 jb + o .. 8 jb + o + 3], half of the rank vector jb multiplies.
__device__ __forceinline__ float4 t8(const float* t, int jb, int o) {
    return make_float4(t[8 * jb + o], t[8 * jb + o + 1], t[8 * jb + o + 2], t[8 * jb + o + 3]);
}

// wide_scalar_acc adds t · B[c] of segment sg into acc[i] for the thread's columns c = c0 + i x
// WIDE_THREADS below cols by the scalar loop (a rank off multiples of 8, or B unaligned): the
// wide expand's and the LoRA SwiGLU's, so both add a column's delta alike.
__device__ __forceinline__ void wide_scalar_acc(const lp_lora_seg& sg, const float* t, int c0, int cols,
                                                float (&acc)[WIDE_EXPAND_PER_THREAD]) {
    for (int j = 0; j < sg.rank; j++) {
        const float tj = t[j];
#pragma unroll
        for (int i = 0; i < WIDE_EXPAND_PER_THREAD; i++) {
            const int c = c0 + i * WIDE_THREADS;
            if (c < cols) acc[i] += tj * bf16_to_f32(sg.b[(size_t)c * sg.rank + j]);
        }
    }
}

// wide_deltas adds t · B[c] of segment sg into acc[i] for the thread's columns c = c0 + i x
// WIDE_THREADS below cols, as expand_wide_block accumulates it: rank vectors of 8 in order
// (dot8), the columns' loads of a vector issued before any is used; or wide_scalar_acc where the
// rank is not a multiple of 8 or B is unaligned. The routed wide expand's and the LoRA SwiGLU's.
__device__ __forceinline__ void wide_deltas(const lp_lora_seg& sg, const float* t, int c0, int cols,
                                            float (&acc)[WIDE_EXPAND_PER_THREAD]) {
    if (expand_vec(sg)) {
        for (int jb = 0; jb < sg.rank / 8; jb++) {
            uint4 bv[WIDE_EXPAND_PER_THREAD];
#pragma unroll
            for (int i = 0; i < WIDE_EXPAND_PER_THREAD; i++) {
                const int c = c0 + i * WIDE_THREADS;
                bv[i] = c < cols ? reinterpret_cast<const uint4*>(sg.b + (size_t)c * sg.rank)[jb] : make_uint4(0u, 0u, 0u, 0u);
            }
#pragma unroll
            for (int i = 0; i < WIDE_EXPAND_PER_THREAD; i++) acc[i] += dot8(bv[i], t8(t, jb, 0), t8(t, jb, 4));
        }
    } else {
        wide_scalar_acc(sg, t, c0, cols, acc);
    }
}

// expand_wide_block is one wide expand block's work: row blockIdx.x of segment sg, columns of
// chunk blockIdx.z. The row's t is the sum of its splits' partials, added in split order; each
// thread takes WIDE_EXPAND_PER_THREAD columns a block width apart, loads their outputs and
// their B vectors before any arithmetic (the plain expand's store after each column keeps the
// compiler from hoisting the next column's loads above it), and stores each column once. Per
// column the sum over the rank runs as in expand_dot, vector after vector.
__device__ __forceinline__ void expand_wide_block(float* out, int out_dim, const lp_lora_seg& sg, const float* scratch,
                                                  int splits, int t_stride) {
    const int r = blockIdx.x;
    if (r >= sg.n) return;  // uniform over the block: no thread reaches the barrier
    __shared__ float t[LP_MAX_LORA_RANK];
    float* orow = out + (size_t)(sg.start + r) * out_dim;
    const int c0 = blockIdx.z * WIDE_EXPAND_COLS + threadIdx.x;
    const int nv = expand_vec(sg) ? sg.rank / 8 : 0;  // 16-byte B vectors per column; 0: the scalar path
    // What needs no t is loaded first, so that the reads of the partial sums below overlap it:
    // the outputs and the first two B vectors of each column (a rank-16 column's whole row).
    float o[WIDE_EXPAND_PER_THREAD], acc[WIDE_EXPAND_PER_THREAD];
    uint4 b0[WIDE_EXPAND_PER_THREAD], b1[WIDE_EXPAND_PER_THREAD];
#pragma unroll
    for (int i = 0; i < WIDE_EXPAND_PER_THREAD; i++) {
        const int c = c0 + i * WIDE_THREADS;
        const uint4* bv = reinterpret_cast<const uint4*>(sg.b + (size_t)c * sg.rank);
        o[i] = c < out_dim ? orow[c] : 0.f;
        b0[i] = c < out_dim && nv >= 1 ? bv[0] : make_uint4(0u, 0u, 0u, 0u);
        b1[i] = c < out_dim && nv >= 2 ? bv[1] : make_uint4(0u, 0u, 0u, 0u);
        acc[i] = 0.f;
    }
    const float* part = scratch + sg.t_off + (size_t)r * sg.rank;
    for (int j = threadIdx.x; j < sg.rank; j += blockDim.x) t[j] = split_sum(part, j, splits, t_stride);
    __syncthreads();
    if (nv > 0) {
        // Two vectors of each column at a time (8 loads in flight per thread), added in rank
        // order as expand_dot adds them; vectors 0 and 1 are the ones loaded above.
        int jb = 0;
        for (; jb + 1 < nv; jb += 2) {
            if (jb > 0) {
#pragma unroll
                for (int i = 0; i < WIDE_EXPAND_PER_THREAD; i++) {
                    const int c = c0 + i * WIDE_THREADS;
                    const uint4* bv = reinterpret_cast<const uint4*>(sg.b + (size_t)c * sg.rank);
                    b0[i] = c < out_dim ? bv[jb] : make_uint4(0u, 0u, 0u, 0u);
                    b1[i] = c < out_dim ? bv[jb + 1] : make_uint4(0u, 0u, 0u, 0u);
                }
            }
#pragma unroll
            for (int i = 0; i < WIDE_EXPAND_PER_THREAD; i++) {
                acc[i] += dot8(b0[i], t8(t, jb, 0), t8(t, jb, 4));
                acc[i] += dot8(b1[i], t8(t, jb + 1, 0), t8(t, jb + 1, 4));
            }
        }
        if (jb < nv) {  // an odd vector count: the last one (vector 0, loaded above, when nv is 1)
            if (jb > 0) {
#pragma unroll
                for (int i = 0; i < WIDE_EXPAND_PER_THREAD; i++) {
                    const int c = c0 + i * WIDE_THREADS;
                    b0[i] = c < out_dim ? reinterpret_cast<const uint4*>(sg.b + (size_t)c * sg.rank)[jb] : make_uint4(0u, 0u, 0u, 0u);
                }
            }
#pragma unroll
            for (int i = 0; i < WIDE_EXPAND_PER_THREAD; i++) acc[i] += dot8(b0[i], t8(t, jb, 0), t8(t, jb, 4));
        }
    } else {
        wide_scalar_acc(sg, t, c0, out_dim, acc);
    }
#pragma unroll
    for (int i = 0; i < WIDE_EXPAND_PER_THREAD; i++) {
        const int c = c0 + i * WIDE_THREADS;
        if (c < out_dim) orow[c] = o[i] + sg.scale * acc[i];
    }
}

__global__ void __launch_bounds__(WIDE_THREADS)
    lora_expand_wide_kernel(float* out, const lp_lora_seg* segs, const float* scratch, int out_dim, int splits, int t_stride) {
    const lp_lora_seg sg = segs[blockIdx.y];
    expand_wide_block(out, out_dim, sg, scratch, splits, t_stride);
}

// Grouped wide expand: as lora_expand_group_kernel, over the wide chunks.
__global__ void __launch_bounds__(WIDE_THREADS)
    lora_expand_group_wide_kernel(lp_lora_outs outs, const lp_lora_seg* segs, const float* scratch, int splits, int t_stride) {
    int g = 0;
    while (g + 1 < outs.groups && (int)blockIdx.y >= outs.end[g]) g++;
    const int out_dim = outs.out_dim[g];
    if ((int)blockIdx.z * WIDE_EXPAND_COLS >= out_dim) return;  // uniform over the block
    const lp_lora_seg sg = segs[blockIdx.y];
    expand_wide_block(outs.out[g], out_dim, sg, scratch, splits, t_stride);
}

// Wide routed expand (lp_lora_routed_wide, lp_route_lora_wide): grid (row, wide column chunk);
// as the routed expand, the block adds row i's real choices in order p into each output, but
// each thread takes WIDE_EXPAND_PER_THREAD columns a block width apart, loads their outputs
// first and the B vectors of all of them before using any, and stores each column once, after
// the last choice (the routed expand's store after each column keeps the compiler from
// hoisting the next column's loads above it; expand_wide_block says the same). Per column and
// choice the sum over the rank runs as in expand_dot, and out + s0*d0 + s1*d1 + ... as in the
// routed expand.
// routed_expand_columns adds a row's k routed choices (sg, their intermediates t, both in shared
// memory) to its output row orow, columns of wide chunk blockIdx.y: the wide routed expand's
// column work, shared with the routed fold's expand so both add a choice with one arithmetic.
__device__ __forceinline__ void routed_expand_columns(float* orow, int out_dim, const lp_lora_seg* sg,
                                                      const float (*t)[LP_MAX_LORA_RANK], int k) {
    const int c0 = blockIdx.y * WIDE_EXPAND_COLS + threadIdx.x;
    float o[WIDE_EXPAND_PER_THREAD];
#pragma unroll
    for (int i = 0; i < WIDE_EXPAND_PER_THREAD; i++) {
        const int c = c0 + i * WIDE_THREADS;
        o[i] = c < out_dim ? orow[c] : 0.f;
    }
    for (int p = 0; p < k; p++) {
        if (sg[p].n == 0) continue;  // uniform over the block
        float acc[WIDE_EXPAND_PER_THREAD];
#pragma unroll
        for (int i = 0; i < WIDE_EXPAND_PER_THREAD; i++) acc[i] = 0.f;
        wide_deltas(sg[p], t[p], c0, out_dim, acc);
#pragma unroll
        for (int i = 0; i < WIDE_EXPAND_PER_THREAD; i++) o[i] += sg[p].scale * acc[i];
    }
#pragma unroll
    for (int i = 0; i < WIDE_EXPAND_PER_THREAD; i++) {
        const int c = c0 + i * WIDE_THREADS;
        if (c < out_dim) orow[c] = o[i];
    }
}

// expand_routed_wide_block is that work for row blockIdx.x, wide chunk blockIdx.y of one routing.
__device__ __forceinline__ void expand_routed_wide_block(float* out, const lp_lora_seg* segs, const float* scratch, int k,
                                                         int out_dim, int splits, int t_stride) {
    __shared__ lp_lora_seg sg[LP_ROUTE_MAX_K];
    __shared__ float t[LP_ROUTE_MAX_K][LP_MAX_LORA_RANK];
    if (!routed_row_load(segs, scratch, k, splits, t_stride, sg, t)) return;
    routed_expand_columns(out + (size_t)sg[0].start * out_dim, out_dim, sg, t, k);
}

__global__ void __launch_bounds__(WIDE_THREADS)
    lora_expand_routed_wide_kernel(float* out, const lp_lora_seg* segs, const float* scratch, int k, int out_dim, int splits,
                                   int t_stride) {
    expand_routed_wide_block(out, segs, scratch, k, out_dim, splits, t_stride);
}

// Grouped routed expand (lp_route_lora_group_wide): member blockIdx.z's rows into its output;
// chunks past the member's width exit at once.
__global__ void __launch_bounds__(WIDE_THREADS) lora_expand_routed_group_kernel(lp_route_group g, int splits, int t_stride) {
    const int m = blockIdx.z;
    if ((int)blockIdx.y * WIDE_EXPAND_COLS >= g.out_dim[m]) return;  // uniform over the block
    expand_routed_wide_block(g.out[m], g.segs[m], g.scratch[m], g.ra[m].passes, g.out_dim[m], splits, t_stride);
}

// shrink_wide launches the wide shrink over num_segs segments of at most max_rows rows, or,
// when routed, over num_segs one-row segments (the segment in grid x).
static void shrink_wide(const float* x, const lp_lora_seg* segs_device, int num_segs, int max_rows, float* scratch, int in_dim,
                        int splits, int t_stride, bool routed, lp_stream s) {
    const dim3 g1 = routed ? dim3(num_segs, 1, splits) : dim3(max_rows, num_segs, splits);
    // Vector loads need 16-byte aligned A rows: in_dim % 8 == 0 (cudaMalloc'd A is aligned) and x.
    const bool vec = in_dim % 8 == 0 && ((uintptr_t)x % 16) == 0;
    if (routed && vec)
        lora_shrink_wide_kernel<true, true><<<g1, WIDE_THREADS, 0, as_stream(s)>>>(x, segs_device, scratch, in_dim, t_stride);
    else if (routed)
        lora_shrink_wide_kernel<false, true><<<g1, WIDE_THREADS, 0, as_stream(s)>>>(x, segs_device, scratch, in_dim, t_stride);
    else if (vec)
        lora_shrink_wide_kernel<true, false><<<g1, WIDE_THREADS, 0, as_stream(s)>>>(x, segs_device, scratch, in_dim, t_stride);
    else
        lora_shrink_wide_kernel<false, false><<<g1, WIDE_THREADS, 0, as_stream(s)>>>(x, segs_device, scratch, in_dim, t_stride);
}

// wide_args_ok checks what every wide launch needs (the caller checks its grid's segment limit).
static bool wide_args_ok(int max_rows, int max_rank, int in_dim, int splits, int t_stride) {
    return max_rows > 0 && max_rank > 0 && max_rank <= LP_MAX_LORA_RANK && in_dim > 0 && splits >= 1 &&
           splits <= LP_LORA_WIDE_MAX_SPLITS && t_stride >= 0;
}

extern "C" int lp_lora_wide(float* out, const float* x, const lp_lora_seg* segs_device, int num_segs, int max_rows, int max_rank,
                            float* scratch, int in_dim, int out_dim, int splits, int t_stride, int phases, lp_stream s) {
    if (num_segs <= 0) return 0;
    if (num_segs > 65535 || !wide_args_ok(max_rows, max_rank, in_dim, splits, t_stride) || out_dim <= 0 ||
        (out_dim + WIDE_EXPAND_COLS - 1) / WIDE_EXPAND_COLS > 65535 || (phases & ~(LP_LORA_SHRINK | LP_LORA_EXPAND)) != 0)
        return (int)cudaErrorInvalidValue;
    if (phases & LP_LORA_SHRINK) shrink_wide(x, segs_device, num_segs, max_rows, scratch, in_dim, splits, t_stride, false, s);
    if (phases & LP_LORA_EXPAND) {
        dim3 g2(max_rows, num_segs, (out_dim + WIDE_EXPAND_COLS - 1) / WIDE_EXPAND_COLS);
        lora_expand_wide_kernel<<<g2, WIDE_THREADS, 0, as_stream(s)>>>(out, segs_device, scratch, out_dim, splits, t_stride);
    }
    LP_CHECK_LAUNCH();
}

// wide_group_chunks checks a grouped wide expand's outputs (widths, group ends in order) and
// returns the wide column chunks of the widest, -1 when they do not fit a launch.
static int wide_group_chunks(const lp_lora_outs& outs) {
    int chunks = 0;
    for (int g = 0; g < outs.groups; g++) {
        if (outs.out_dim[g] <= 0 || (g > 0 && outs.end[g] < outs.end[g - 1])) return -1;
        const int c = (outs.out_dim[g] + WIDE_EXPAND_COLS - 1) / WIDE_EXPAND_COLS;
        if (c > chunks) chunks = c;
    }
    return chunks > 65535 ? -1 : chunks;
}

extern "C" int lp_lora_group_wide(lp_lora_outs outs, const float* x, const lp_lora_seg* segs_device, int num_segs, int max_rows,
                                  int max_rank, float* scratch, int in_dim, int splits, int t_stride, lp_stream s) {
    if (num_segs <= 0) return 0;
    if (outs.groups < 1 || outs.groups > LP_LORA_GROUP || outs.end[outs.groups - 1] != num_segs ||
        num_segs > 65535 || !wide_args_ok(max_rows, max_rank, in_dim, splits, t_stride))
        return (int)cudaErrorInvalidValue;
    const int chunks = wide_group_chunks(outs);
    if (chunks < 0) return (int)cudaErrorInvalidValue;
    shrink_wide(x, segs_device, num_segs, max_rows, scratch, in_dim, splits, t_stride, false, s);
    dim3 g2(max_rows, num_segs, chunks);
    lora_expand_group_wide_kernel<<<g2, WIDE_THREADS, 0, as_stream(s)>>>(outs, segs_device, scratch, splits, t_stride);
    LP_CHECK_LAUNCH();
}

// RowSegs is what a block of the LoRA SwiGLU or the LoRA RoPE needs of its row in up to two
// segment groups: the row's segment in each (found -1 where it has none) and that segment's
// intermediate for the row, its split partials summed in split order.
struct RowSegs {
    int found[2];
    lp_lora_seg sg[2];
    float t[2][LP_MAX_LORA_RANK];
};

// load_row_segs fills rs (shared) for row, group g being segs[lo[g], hi[g]): the block's threads
// test the segments' row ranges together (a group's rows are disjoint, so at most one thread
// writes each found), then copy the segments and sum their partials. Every thread calls it.
__device__ __forceinline__ void load_row_segs(RowSegs& rs, const lp_lora_seg* segs, const int (&lo)[2], const int (&hi)[2], int row,
                                              const float* scratch, int splits, int t_stride) {
    if (threadIdx.x < 2) rs.found[threadIdx.x] = -1;
    __syncthreads();
    for (int g = 0; g < 2; g++)
        for (int i = lo[g] + (int)threadIdx.x; i < hi[g]; i += blockDim.x)
            if (row >= segs[i].start && row < segs[i].start + segs[i].n) rs.found[g] = i;
    __syncthreads();
    if (threadIdx.x < 2 && rs.found[threadIdx.x] >= 0) rs.sg[threadIdx.x] = segs[rs.found[threadIdx.x]];
    __syncthreads();
    for (int g = 0; g < 2; g++) {
        if (rs.found[g] < 0) continue;  // uniform over the block
        const float* part = scratch + rs.sg[g].t_off + (size_t)(row - rs.sg[g].start) * rs.sg[g].rank;
        for (int j = threadIdx.x; j < rs.sg[g].rank; j += blockDim.x) rs.t[g][j] = split_sum(part, j, splits, t_stride);
    }
    __syncthreads();
}

// LoRA SwiGLU (lp_lora_swiglu; the design is at the top of the file): grid (row, wide column
// chunk). The block finds its row's segment in each group and its intermediate (load_row_segs),
// and each thread takes WIDE_EXPAND_PER_THREAD columns a block width apart: gate and up loaded
// first, each plus its delta with expand_wide_block's per-column arithmetic (wide_deltas), then
// silu_value, and act and its bf16 rounding stored.
__global__ void __launch_bounds__(WIDE_THREADS)
    lora_swiglu_kernel(float* act, uint16_t* act_bf16, const float* gate, const float* up, int cols, const lp_lora_seg* segs,
                       int gate_end, int num_segs, const float* scratch, int splits, int t_stride) {
    __shared__ RowSegs rs;
    const int row = blockIdx.x;
    const int lo[2] = {0, gate_end}, hi[2] = {gate_end, num_segs};
    load_row_segs(rs, segs, lo, hi, row, scratch, splits, t_stride);
    const int* found = rs.found;
    const lp_lora_seg* sg = rs.sg;
    const size_t base = (size_t)row * cols;
    const int c0 = blockIdx.y * WIDE_EXPAND_COLS + threadIdx.x;
    float gv[WIDE_EXPAND_PER_THREAD], uv[WIDE_EXPAND_PER_THREAD], dg[WIDE_EXPAND_PER_THREAD], du[WIDE_EXPAND_PER_THREAD];
#pragma unroll
    for (int i = 0; i < WIDE_EXPAND_PER_THREAD; i++) {
        const int c = c0 + i * WIDE_THREADS;
        gv[i] = c < cols ? gate[base + c] : 0.f;
        uv[i] = c < cols ? up[base + c] : 0.f;
        dg[i] = du[i] = 0.f;
    }
    if (found[0] >= 0) wide_deltas(sg[0], rs.t[0], c0, cols, dg);
    if (found[1] >= 0) wide_deltas(sg[1], rs.t[1], c0, cols, du);
#pragma unroll
    for (int i = 0; i < WIDE_EXPAND_PER_THREAD; i++) {
        const int c = c0 + i * WIDE_THREADS;
        if (c >= cols) continue;
        float g = gv[i], u = uv[i];
        if (found[0] >= 0) g = g + sg[0].scale * dg[i];
        if (found[1] >= 0) u = u + sg[1].scale * du[i];
        const float a = silu_value(g, u);
        act[base + c] = a;
        act_bf16[base + c] = f32_to_bf16(a);
    }
}

extern "C" int lp_lora_swiglu(float* act, uint16_t* act_bf16, const float* gate, const float* up, int rows, int cols, const float* x,
                              const lp_lora_seg* segs_device, int gate_end, int num_segs, int max_rows, int max_rank, float* scratch,
                              int in_dim, int splits, int t_stride, lp_stream s) {
    if (rows <= 0 || cols <= 0 || num_segs <= 0 || num_segs > 65535 || gate_end < 0 || gate_end > num_segs ||
        (cols + WIDE_EXPAND_COLS - 1) / WIDE_EXPAND_COLS > 65535 || !wide_args_ok(max_rows, max_rank, in_dim, splits, t_stride))
        return (int)cudaErrorInvalidValue;
    shrink_wide(x, segs_device, num_segs, max_rows, scratch, in_dim, splits, t_stride, false, s);
    dim3 g2(rows, (cols + WIDE_EXPAND_COLS - 1) / WIDE_EXPAND_COLS);
    lora_swiglu_kernel<<<g2, WIDE_THREADS, 0, as_stream(s)>>>(act, act_bf16, gate, up, cols, segs_device, gate_end, num_segs,
                                                                scratch, splits, t_stride);
    LP_CHECK_LAUNCH();
}

// LoRA RoPE (lp_lora_rope_store_kv; the design is at the top of the file): lp_rope_store_kv's
// grid (row, head slot), 64 threads. A query head's block finds its row's segment among q's, a
// key head's among k's and v's, with its intermediate (load_row_segs), and adds each column's
// delta (expand_dot, the
// expands' per-column arithmetic) to the values it loads before rotating and storing them as
// decode_fused.cu does (rope_rotate); v is written back with its deltas as well as to the cache.
__global__ void lora_rope_store_kv_kernel(float* q, float* k, float* v, uint16_t* kc, uint16_t* vc, const int32_t* positions,
                                          const int32_t* slots, const float* table, int heads, int kv_heads, int dim,
                                          const lp_lora_seg* segs, int q_end, int k_end, int num_segs, const float* scratch,
                                          int splits, int t_stride) {
    __shared__ RowSegs rs;  // a query head's block: group 0 q's segments; a key head's: 0 k's, 1 v's
    const int row = blockIdx.x, h = blockIdx.y, half = dim / 2;
    const bool query = h < heads;
    const int lo[2] = {query ? 0 : q_end, k_end}, hi[2] = {query ? q_end : k_end, query ? k_end : num_segs};
    load_row_segs(rs, segs, lo, hi, row, scratch, splits, t_stride);
    const float* tb = table + (size_t)positions[row] * dim;
    // plus adds group g's delta of column c to value x (x itself where the row has no segment).
    auto plus = [&](int g, float x, int c) {
        return rs.found[g] >= 0 ? x + rs.sg[g].scale * expand_dot(rs.sg[g].b, rs.sg[g].rank, expand_vec(rs.sg[g]), rs.t[g], c) : x;
    };
    if (query) {
        float* x = q + ((size_t)row * heads + h) * dim;
        const int col = h * dim;
        for (int j = threadIdx.x; j < half; j += blockDim.x) {
            float ra, rb;
            rope_rotate(plus(0, x[j], col + j), plus(0, x[j + half], col + j + half), tb[j], tb[half + j], ra, rb);
            x[j] = ra;
            x[j + half] = rb;
        }
        return;
    }
    const int width = kv_heads * dim, col = (h - heads) * dim;
    const size_t src = (size_t)row * width + col, dst = (size_t)slots[row] * width + col;
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        float ra, rb;
        rope_rotate(plus(0, k[src + j], col + j), plus(0, k[src + j + half], col + j + half), tb[j], tb[half + j], ra, rb);
        const float va = plus(1, v[src + j], col + j), vb = plus(1, v[src + j + half], col + j + half);
        k[src + j] = ra;
        k[src + j + half] = rb;
        v[src + j] = va;
        v[src + j + half] = vb;
        kc[dst + j] = f32_to_bf16(ra);
        kc[dst + j + half] = f32_to_bf16(rb);
        vc[dst + j] = f32_to_bf16(va);
        vc[dst + j + half] = f32_to_bf16(vb);
    }
}

extern "C" int lp_lora_rope_store_kv(float* q, float* k, float* v, uint16_t* kcache, uint16_t* vcache, const int32_t* positions,
                                     const int32_t* slots, const float* table, int n, int heads, int kv_heads, int head_dim,
                                     const float* x, const lp_lora_seg* segs_device, int q_end, int k_end, int num_segs, int max_rows,
                                     int max_rank, float* scratch, int in_dim, int splits, int t_stride, lp_stream s) {
    if (n <= 0 || heads <= 0 || kv_heads <= 0 || heads % kv_heads != 0 || heads + kv_heads > 65535 || !lp_head_dim_ok(head_dim) ||
        num_segs <= 0 || num_segs > 65535 || q_end < 0 || q_end > k_end || k_end > num_segs ||
        !wide_args_ok(max_rows, max_rank, in_dim, splits, t_stride))
        return (int)cudaErrorInvalidValue;
    shrink_wide(x, segs_device, num_segs, max_rows, scratch, in_dim, splits, t_stride, false, s);
    lora_rope_store_kv_kernel<<<dim3(n, heads + kv_heads), 64, 0, as_stream(s)>>>(q, k, v, kcache, vcache, positions, slots, table,
                                                                                  heads, kv_heads, head_dim, segs_device, q_end, k_end,
                                                                                  num_segs, scratch, splits, t_stride);
    LP_CHECK_LAUNCH();
}

// Routed fold expand (lp_route_fold_expand; the design is at the top of the file): grid (row,
// wide column chunk, member). Thread 0 routes the block's row from the gate logits the products
// launch wrote (route_row, which also names each pass's expert) and the block copies each real
// choice's shrink out of the dense [experts * t_rank] row into shared memory; then the wide
// routed expand's column work adds the choices in pass order (routed_expand_columns).
__global__ void __launch_bounds__(WIDE_THREADS) lora_route_fold_expand_kernel(lp_route_fold f) {
    __shared__ lp_lora_seg sg[LP_ROUTE_MAX_K];
    __shared__ int chosen[LP_ROUTE_MAX_K];
    __shared__ float t[LP_ROUTE_MAX_K][LP_MAX_LORA_RANK];
    const int m = blockIdx.z, i = blockIdx.x, out_dim = f.out_dim[m];
    if ((int)blockIdx.y * WIDE_EXPAND_COLS >= out_dim) return;  // uniform over the block
    const lp_route_args& ra = f.ra[m];
    __shared__ route_stage st;
    const float* l = ra.logits + (size_t)i * ra.rows;
    const lp_route_expert* experts = ra.experts;
    route_staged(l, experts, ra.rows, ra.nulls, ra.staged, st);
    if (threadIdx.x == 0)
        route_row(l, i, ra.rows, ra.k, ra.temperature, ra.nulls, experts, sg, ra.passes, ra.start,
                  0, blockIdx.y == 0 ? ra.trace : nullptr, ra.trace_cols, ra.layer, chosen);
    __syncthreads();
    const float* trow = f.t[m] + (size_t)i * (ra.rows - ra.nulls) * f.t_rank[m];
    for (int p = 0; p < ra.passes; p++)
        if (sg[p].n > 0)
            for (int j = threadIdx.x; j < sg[p].rank; j += blockDim.x) t[p][j] = trow[(size_t)chosen[p] * f.t_rank[m] + j];
    __syncthreads();
    routed_expand_columns(f.out[m] + (size_t)i * out_dim, out_dim, sg, t, ra.passes);
}

extern "C" int lp_route_fold_expand(lp_route_fold f, lp_stream s) {
    if (f.members < 1 || f.members > LP_LORA_GROUP || f.n < 1 || f.n > LP_LORA_ROUTED_MAX_ROWS) return (int)cudaErrorInvalidValue;
    int chunks = 0;
    for (int m = 0; m < f.members; m++) {
        const lp_route_args& ra = f.ra[m];
        if (!route_args_ok(f.n, ra.rows, ra.k, ra.temperature, ra.nulls, ra.passes, ra.start, 0, ra.trace, ra.trace_cols, ra.layer) ||
            ra.passes < 1 || ra.rows - ra.nulls < 1 || !ra.experts || !ra.logits || !f.t[m] || f.t_rank[m] < 1 ||
            f.t_rank[m] > LP_MAX_LORA_RANK || !f.out[m] || f.out_dim[m] <= 0)
            return (int)cudaErrorInvalidValue;
        const int c = (f.out_dim[m] + WIDE_EXPAND_COLS - 1) / WIDE_EXPAND_COLS;
        if (c > chunks) chunks = c;
    }
    if (chunks > 65535) return (int)cudaErrorInvalidValue;
    lora_route_fold_expand_kernel<<<dim3(f.n, chunks, f.members), WIDE_THREADS, 0, as_stream(s)>>>(f);
    LP_CHECK_LAUNCH();
}

// Expert-major routed group (lp_route_lora_group_em; the design is at the top of the file).

// A member's plan in ints: the chunk count; where each pass's chunks begin (passes + 1 entries
// of LP_ROUTE_MAX_K + 1 kept); each chunk's [begin, end) in the order; the order (the table's
// real entries sorted by pass, then by expert, in table order within one). A chunk is at most
// LP_ROUTE_EM_ROWS choices of one (pass, expert): sum over the keys of ceil(count / rows) is at
// most ceil(choices / rows) + experts x passes.
__host__ __device__ __forceinline__ int em_max_chunks(int choices, int experts, int passes) {
    return (choices + LP_ROUTE_EM_ROWS - 1) / LP_ROUTE_EM_ROWS + experts * passes;
}
constexpr int EM_CHUNKS_AT = 2 + LP_ROUTE_MAX_K;  // after the count and pass_first
__host__ __device__ __forceinline__ int em_order_at(int choices, int experts, int passes) {
    return EM_CHUNKS_AT + 2 * em_max_chunks(choices, experts, passes);
}
__host__ __device__ __forceinline__ int em_plan_len(int choices, int experts, int passes) {
    return em_order_at(choices, experts, passes) + choices;
}

extern "C" int lp_route_em_plan_ints(int n, int passes, int experts) { return em_plan_len(n * passes, experts, passes); }

// Plan: grid (member), EM_PLAN_THREADS threads. The rows' logits are staged in shared memory
// where they fit (n x rows <= LP_ROUTE_EM_MAX_LOGITS; else route_row reads them where they
// are), then thread i routes row i with route_row into the member's segment table and the
// trace, as the routing shrinks do. Each real choice gets its expert's canonical index (the
// first listed with the same A and B, so an adapter listed twice is one expert); the thread of
// key (pass q, expert e) counts and then lists that key's choices in row order; thread 0 cuts
// each key's list into chunks. Fixed orders throughout, so the plan is the same whatever the
// timing.
constexpr int EM_PLAN_THREADS = 256;
constexpr int EM_KEYS = LP_ROUTE_MAX_ROWS * LP_ROUTE_MAX_K;
__global__ void __launch_bounds__(EM_PLAN_THREADS) route_em_plan_kernel(lp_route_group g, int* plan, int plan_len) {
    __shared__ float lg[LP_ROUTE_EM_MAX_LOGITS];
    __shared__ short expert_of[LP_ROUTE_EM_MAX_CHOICES];
    __shared__ int canon[LP_ROUTE_MAX_ROWS];
    __shared__ int count[EM_KEYS], first[EM_KEYS];
    const int m = blockIdx.x, n = g.n;
    const lp_route_args& ra = g.ra[m];
    const int real = ra.rows - ra.nulls, passes = ra.passes, choices = n * passes, keys = real * passes;
    int* const p = plan + (size_t)m * plan_len;
    const bool staged = n * ra.rows <= LP_ROUTE_EM_MAX_LOGITS;
    if (staged)
        for (int i = threadIdx.x; i < n * ra.rows; i += blockDim.x) lg[i] = ra.logits[i];
    for (int e = threadIdx.x; e < real; e += blockDim.x) {
        const lp_route_expert ex = ra.experts[e];
        int c = e;
        for (int f = 0; f < e && c == e; f++)
            if (ra.experts[f].rank > 0 && ra.experts[f].a == ex.a && ra.experts[f].b == ex.b) c = f;
        canon[e] = ex.rank > 0 ? c : -1;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        int chosen[LP_ROUTE_MAX_K];
        for (int q = 0; q < passes; q++) chosen[q] = -1;
        lp_lora_seg* row_segs = g.segs[m] + (size_t)i * passes;
        route_row((staged ? lg : ra.logits) + (size_t)i * ra.rows, i, ra.rows, ra.k, ra.temperature, ra.nulls, ra.experts, row_segs,
                  passes, ra.start, ra.seg_stride, ra.trace, ra.trace_cols, ra.layer, chosen);
        for (int q = 0; q < passes; q++) {
            const int e = chosen[q];
            expert_of[i * passes + q] = (short)(e >= 0 && row_segs[q].n > 0 ? canon[e] : -1);
        }
    }
    __syncthreads();
    for (int key = threadIdx.x; key < keys; key += blockDim.x) {  // key = q * real + e
        const int q = key / real, e = key % real;
        int c = 0;
        for (int i = 0; i < n; i++) c += expert_of[i * passes + q] == e;
        count[key] = c;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int at = 0, chunks = 0;
        int* const pass_first = p + 1;
        int* const ranges = p + EM_CHUNKS_AT;
        for (int key = 0; key < keys; key++) {
            if (key % real == 0) pass_first[key / real] = chunks;
            first[key] = at;
            for (int b = 0; b < count[key]; b += LP_ROUTE_EM_ROWS, chunks++) {
                ranges[2 * chunks] = at + b;
                ranges[2 * chunks + 1] = at + min(count[key], b + LP_ROUTE_EM_ROWS);
            }
            at += count[key];
        }
        pass_first[passes] = chunks;
        p[0] = chunks;
    }
    __syncthreads();
    int* const order = p + em_order_at(choices, real, passes);
    for (int key = threadIdx.x; key < keys; key += blockDim.x) {
        const int q = key / real, e = key % real;
        int at = first[key];
        for (int i = 0; i < n; i++)
            if (expert_of[i * passes + q] == e) order[at++] = i * passes + q;
    }
}

// Expert-major shrink: grid (chunk, member, split); the chunk's choices, one expert's, in turn.
template <bool VEC>
__global__ void __launch_bounds__(WIDE_THREADS)
    route_shrink_em_kernel(lp_route_group g, const int* plan, int plan_len, const float* x, int in_dim, int t_stride) {
    const int m = blockIdx.y, c = blockIdx.x;
    const lp_route_args& ra = g.ra[m];
    const int* const p = plan + (size_t)m * plan_len;
    if (c >= p[0]) return;  // uniform over the block
    const int* const range = p + EM_CHUNKS_AT + 2 * c;
    const int* const order = p + em_order_at(g.n * ra.passes, ra.rows - ra.nulls, ra.passes);
    for (int q = range[0]; q < range[1]; q++) {
        const lp_lora_seg sg = g.segs[m][order[q]];
        shrink_wide_block<VEC>(x, sg, 0, g.scratch[m], in_dim, t_stride);
    }
}

// Expert-major expand of pass p: grid (chunk of the pass, wide column chunk, member); the
// chunk's choices (distinct rows: a row has one choice a pass) in turn.
__global__ void __launch_bounds__(WIDE_THREADS) lora_expand_em_kernel(lp_route_group g, const int* plan, int plan_len, int pass, int splits,
                                                                      int t_stride) {
    __shared__ lp_lora_seg sg[1];
    __shared__ float t[1][LP_MAX_LORA_RANK];
    const int m = blockIdx.z, out_dim = g.out_dim[m];
    const lp_route_args& ra = g.ra[m];
    const int* const p = plan + (size_t)m * plan_len;
    if (pass >= ra.passes || (int)blockIdx.y * WIDE_EXPAND_COLS >= out_dim) return;  // uniform over the block
    const int c = p[1 + pass] + (int)blockIdx.x;
    if (c >= p[1 + pass + 1]) return;
    const int* const range = p + EM_CHUNKS_AT + 2 * c;
    const int* const order = p + em_order_at(g.n * ra.passes, ra.rows - ra.nulls, ra.passes);
    for (int q = range[0]; q < range[1]; q++) {
        if (threadIdx.x == 0) sg[0] = g.segs[m][order[q]];
        __syncthreads();
        for (int r = threadIdx.x; r < sg[0].rank; r += blockDim.x) t[0][r] = split_sum(g.scratch[m] + sg[0].t_off, r, splits, t_stride);
        __syncthreads();
        routed_expand_columns(g.out[m] + (size_t)sg[0].start * out_dim, out_dim, sg, t, 1);
        __syncthreads();  // sg and t are rewritten for the next choice
    }
}

// route_group_join makes s wait on g's joins before the expands (lp_route_group says why).
static int route_group_join(const lp_route_group& g, lp_stream s) {
    for (int j = 0; j < g.njoins; j++) {
        const cudaError_t e = cudaStreamWaitEvent(as_stream(s), (cudaEvent_t)g.joins[j], 0);
        if (e != cudaSuccess) return (int)e;
    }
    return 0;
}

extern "C" int lp_route_lora_group_em(lp_route_group g, const float* x, int in_dim, int splits, int t_stride, int* plan, int plan_len,
                                      lp_stream s) {
    if (g.members < 1 || g.members > LP_LORA_GROUP || g.n < 1 || !x || !plan || g.njoins < 0 || g.njoins > LP_FORK_LANES)
        return (int)cudaErrorInvalidValue;
    int passes = 0, chunks = 0, max_chunks = 0, pass_chunks = 0;
    for (int m = 0; m < g.members; m++) {
        const lp_route_args& ra = g.ra[m];
        const int real = ra.rows - ra.nulls;
        if (!route_args_ok(g.n, ra.rows, ra.k, ra.temperature, ra.nulls, ra.passes, ra.start, ra.seg_stride, ra.trace, ra.trace_cols,
                           ra.layer) ||
            ra.passes < 1 || real < 1 || !ra.logits || !ra.experts || (long long)g.n * ra.passes > LP_ROUTE_EM_MAX_CHOICES ||
            plan_len < em_plan_len(g.n * ra.passes, real, ra.passes) || ra.seg_stride < g.max_rank[m] || !g.segs[m] || !g.scratch[m] ||
            !g.out[m] || g.out_dim[m] <= 0 || !wide_args_ok(1, g.max_rank[m], in_dim, splits, t_stride) ||
            (splits > 1 && (long long)t_stride < (long long)g.n * ra.passes * ra.seg_stride))  // splits would overlap
            return (int)cudaErrorInvalidValue;
        const int c = (g.out_dim[m] + WIDE_EXPAND_COLS - 1) / WIDE_EXPAND_COLS;
        if (ra.passes > passes) passes = ra.passes;
        if (c > chunks) chunks = c;
        const int mc = em_max_chunks(g.n * ra.passes, real, ra.passes), pc = em_max_chunks(g.n, real, 1);
        if (mc > max_chunks) max_chunks = mc;
        if (pc > pass_chunks) pass_chunks = pc;
    }
    if (chunks > 65535 || max_chunks > 65535) return (int)cudaErrorInvalidValue;
    route_em_plan_kernel<<<g.members, EM_PLAN_THREADS, 0, as_stream(s)>>>(g, plan, plan_len);
    const dim3 g1(max_chunks, g.members, splits);
    if (in_dim % 8 == 0 && ((uintptr_t)x % 16) == 0)
        route_shrink_em_kernel<true><<<g1, WIDE_THREADS, 0, as_stream(s)>>>(g, plan, plan_len, x, in_dim, t_stride);
    else
        route_shrink_em_kernel<false><<<g1, WIDE_THREADS, 0, as_stream(s)>>>(g, plan, plan_len, x, in_dim, t_stride);
    if (const int e = route_group_join(g, s)) return e;
    for (int p = 0; p < passes; p++)
        lora_expand_em_kernel<<<dim3(pass_chunks, chunks, g.members), WIDE_THREADS, 0, as_stream(s)>>>(g, plan, plan_len, p, splits,
                                                                                                      t_stride);
    LP_CHECK_LAUNCH();
}

// The grouped wide expand alone (LORAPLEX_LORA_FOLD; the design is at the top of the file): the
// intermediates are in scratch already, one split, written by the base products' launch.
extern "C" int lp_lora_group_expand(lp_lora_outs outs, const lp_lora_seg* segs_device, int num_segs, int max_rows, float* scratch,
                                    lp_stream s) {
    if (num_segs <= 0) return 0;
    if (outs.groups < 1 || outs.groups > LP_LORA_GROUP || outs.end[outs.groups - 1] != num_segs || num_segs > 65535 ||
        max_rows <= 0 || max_rows > 65535 || !scratch)
        return (int)cudaErrorInvalidValue;
    const int chunks = wide_group_chunks(outs);
    if (chunks < 0) return (int)cudaErrorInvalidValue;
    dim3 g2(max_rows, num_segs, chunks);
    lora_expand_group_wide_kernel<<<g2, WIDE_THREADS, 0, as_stream(s)>>>(outs, segs_device, scratch, 1, 0);
    LP_CHECK_LAUNCH();
}

// Routed wide (LORAPLEX_ROUTED_WIDE; the design is at the top of the file): the wide shrink over
// the rows x k one-row segments, then the routed expand adding each choice's split partials.
extern "C" int lp_lora_routed_wide(float* out, const float* x, const lp_lora_seg* segs_device, int rows, int k, int max_rank,
                                   float* scratch, int in_dim, int out_dim, int splits, int t_stride, lp_stream s) {
    if (rows <= 0) return 0;
    if (k < 1 || k > LP_ROUTE_MAX_K || rows > LP_LORA_ROUTED_MAX_ROWS || out_dim <= 0 ||
        (out_dim + WIDE_EXPAND_COLS - 1) / WIDE_EXPAND_COLS > 65535 || !wide_args_ok(1, max_rank, in_dim, splits, t_stride))
        return (int)cudaErrorInvalidValue;
    shrink_wide(x, segs_device, rows * k, 1, scratch, in_dim, splits, t_stride, true, s);
    dim3 g2(rows, (out_dim + WIDE_EXPAND_COLS - 1) / WIDE_EXPAND_COLS);
    lora_expand_routed_wide_kernel<<<g2, WIDE_THREADS, 0, as_stream(s)>>>(out, segs_device, scratch, k, out_dim, splits, t_stride);
    LP_CHECK_LAUNCH();
}

// Routing wide (LORAPLEX_ROUTED_FUSED with LORAPLEX_ROUTED_WIDE): lp_route_segs and
// lp_lora_routed_wide in two launches instead of three, the routing inside the shrink.
extern "C" int lp_route_lora_wide(lp_route_args ra, float* out, const float* x, lp_lora_seg* segs_device, int n, int max_rank,
                                  float* scratch, int in_dim, int out_dim, int splits, int t_stride, lp_stream s) {
    if (n <= 0) return 0;
    if (!route_args_ok(n, ra.rows, ra.k, ra.temperature, ra.nulls, ra.passes, ra.start, ra.seg_stride, ra.trace, ra.trace_cols,
                       ra.layer) ||
        ra.passes < 1 || ra.seg_stride < max_rank || n > LP_LORA_ROUTED_MAX_ROWS || out_dim <= 0 ||
        (out_dim + WIDE_EXPAND_COLS - 1) / WIDE_EXPAND_COLS > 65535 || !wide_args_ok(1, max_rank, in_dim, splits, t_stride))
        return (int)cudaErrorInvalidValue;
    const dim3 g1(n * ra.passes, 1, splits);
    if (in_dim % 8 == 0 && ((uintptr_t)x % 16) == 0)
        route_shrink_wide_kernel<true><<<g1, WIDE_THREADS, 0, as_stream(s)>>>(ra, x, segs_device, scratch, in_dim, t_stride);
    else
        route_shrink_wide_kernel<false><<<g1, WIDE_THREADS, 0, as_stream(s)>>>(ra, x, segs_device, scratch, in_dim, t_stride);
    dim3 g2(n, (out_dim + WIDE_EXPAND_COLS - 1) / WIDE_EXPAND_COLS);
    lora_expand_routed_wide_kernel<<<g2, WIDE_THREADS, 0, as_stream(s)>>>(out, segs_device, scratch, ra.passes, out_dim, splits,
                                                                          t_stride);
    LP_CHECK_LAUNCH();
}

// Routing wide over a group (LORAPLEX_ROUTED_GROUP): lp_route_lora_wide for each member of g,
// in one shrink and one expand launch for all of them.
extern "C" int lp_route_lora_group_wide(lp_route_group g, const float* x, int in_dim, int splits, int t_stride, int rows,
                                        lp_stream s) {
    if (g.members < 1 || g.members > LP_LORA_GROUP || g.n < 1 || g.n > LP_LORA_ROUTED_MAX_ROWS || !x || (rows && splits != 1) ||
        g.njoins < 0 || g.njoins > LP_FORK_LANES)
        return (int)cudaErrorInvalidValue;
    int passes = 0, chunks = 0;
    for (int m = 0; m < g.members; m++) {
        const lp_route_args& ra = g.ra[m];
        if (!route_args_ok(g.n, ra.rows, ra.k, ra.temperature, ra.nulls, ra.passes, ra.start, ra.seg_stride, ra.trace, ra.trace_cols,
                           ra.layer) ||
            ra.passes < 1 || ra.seg_stride < g.max_rank[m] || !g.segs[m] || !g.scratch[m] || !g.out[m] || g.out_dim[m] <= 0 ||
            !wide_args_ok(1, g.max_rank[m], in_dim, splits, t_stride) ||
            (splits > 1 && (long long)t_stride < (long long)g.n * ra.passes * ra.seg_stride))  // splits would overlap
            return (int)cudaErrorInvalidValue;
        const int c = (g.out_dim[m] + WIDE_EXPAND_COLS - 1) / WIDE_EXPAND_COLS;
        if (ra.passes > passes) passes = ra.passes;
        if (c > chunks) chunks = c;
    }
    if (chunks > 65535) return (int)cudaErrorInvalidValue;
    const bool vec = in_dim % 8 == 0 && ((uintptr_t)x % 16) == 0;
    if (rows) {
        const dim3 g1(g.n, g.members);
        if (vec)
            route_shrink_rows_kernel<true><<<g1, WIDE_THREADS, 0, as_stream(s)>>>(g, x, in_dim);
        else
            route_shrink_rows_kernel<false><<<g1, WIDE_THREADS, 0, as_stream(s)>>>(g, x, in_dim);
    } else {
        const dim3 g1(g.n * passes, g.members, splits);
        if (vec)
            route_shrink_group_kernel<true><<<g1, WIDE_THREADS, 0, as_stream(s)>>>(g, x, in_dim, t_stride);
        else
            route_shrink_group_kernel<false><<<g1, WIDE_THREADS, 0, as_stream(s)>>>(g, x, in_dim, t_stride);
    }
    if (const int e = route_group_join(g, s)) return e;
    dim3 g2(g.n, chunks, g.members);
    lora_expand_routed_group_kernel<<<g2, WIDE_THREADS, 0, as_stream(s)>>>(g, splits, t_stride);
    LP_CHECK_LAUNCH();
}
