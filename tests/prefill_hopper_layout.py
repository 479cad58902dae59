#!/usr/bin/env python3
"""prefill_hopper_layout.py - the data paths of the Hopper prefill kernels, emulated element by element.

The kernels cannot be run without a Hopper GPU; this mirrors their index arithmetic (keep them in step) and
checks it end to end with integer data, so a layout mistake shows here before the GPU run.

kernels/cuda/attn_prefill_hopper.cu (bf16 pools):
- Q, K and V tiles as the copy engine writes 64-column x R-row bf16 boxes with the 128-byte swizzle (panels of
  64 columns: Q 128 x 128 bytes apart, K/V BN x 128);
- S = Q K^T through K-major SW128 descriptors (k16 step: panel ks / 4, start + 32 (ks % 4) bytes);
- the P packing (P[i] = S[2i], S[2i+1]) as the m64nNk16 A fragment, and O += P V with V read through the
  MN-major SW128 descriptor (LBO = BN * 128 between 64-column panels, SBO = 1024 between 8-key groups, k-step
  start + 2048 bytes) - the PTX canonical layout ((T,8,m),(8,k)) : ((1,T,LBO),(8T,SBO)), T = 8 elements;
- FP8 pools on f16 tensor cores: the converter's stores (hp_convert_kv) reproduce that copy layout.

kernels/cuda/attn_prefill_hopper_e4m3.cu (e4m3 QGMMA):
- Q8 written by the consumer warpgroups (HD/16 threads per row, 16 codes each, SW128 chunk = chunk ^ row % 8);
- K and V tiles as the copy engine writes 128-byte x R-row boxes with CU_TENSOR_MAP_SWIZZLE_128B (the 16-byte
  chunk bits [6:4] of a shared address XOR its bits [9:7], boxes 1024-aligned);
- the V transposer (96 threads, warp step q, 4x4 byte blocks, the key permutation, keys >= valid as zeros);
- wgmma's operand reads through K-major SW128 descriptors (row m at (m / 8) * SBO + (m % 8) * 128, k-step
  start + 32 bytes, SBO 1024) for S = Q8 K^T (m64n128k32) and O += P V^T (m64nHDk32, A from registers);
- the S accumulator layout (d[4i+e] = S[16w+g][8i+2t+e], d[4i+2+e] = row + 8) and the P packing into the
  8-bit A fragment (a0 = A[g][4t..4t+3], a1 = row g+8, a2 = A[g][16+4t..], a3 = row g+8).
Checks S == Q K^T and O == P V exactly: bf16 at head_dim 256 (BN 80) and 128 (BN 128); e4m3 at head_dim 256
and 128, all keys valid and the last 28 masked. Exit 0 on success, 1 on a mismatch, 77 without numpy."""
import sys

try:
    import numpy as np
except ImportError:
    print("numpy missing: skipped")
    sys.exit(77)

BN = 128  # keys per tile
CH_Q = 128 * 128  # bytes between Q8 panels


def swz(a):
    """The 128-byte swizzle as a function of the shared address."""
    return a ^ (((a >> 7) & 7) << 4)


def check_bf16(hd, bn, rng):
    """attn_prefill_hopper.cu, bf16: element addresses in bytes, 2 bytes per element."""
    mem = {}
    q = rng.integers(-7, 8, size=(128, hd))
    k = rng.integers(-7, 8, size=(bn, hd))
    v = rng.integers(-7, 8, size=(bn, hd))
    sq, kst, vst = 0, 1 << 17, 2 << 17
    ch_q, ch_kv = 128 * 128, bn * 128
    for row in range(128):  # hp_tma_q: boxes of 64 rows x 64 columns
        for col in range(hd):
            mem[swz(sq + (col // 64) * ch_q + row * 128 + (col % 64) * 2)] = q[row, col]
    for base, m in ((kst, k), (vst, v)):  # hp_tma_kv<HD/64, BN, 64>
        for key in range(bn):
            for col in range(hd):
                mem[swz(base + (col // 64) * ch_kv + key * 128 + (col % 64) * 2)] = m[key, col]
    ok = True
    for wg in range(2):
        qwg = sq + wg * 64 * 128
        s = np.zeros((64, bn), dtype=np.int64)
        for ks in range(hd // 16):  # hp_qk: K-major A and B, SBO 1024
            oq = (ks >> 2) * ch_q + (ks & 3) * 32
            ok_ = (ks >> 2) * ch_kv + (ks & 3) * 32
            a = np.array([[mem[swz(qwg + oq + (m // 8) * 1024 + (m % 8) * 128 + 2 * kk)] for kk in range(16)]
                          for m in range(64)])
            b = np.array([[mem[swz(kst + ok_ + (n // 8) * 1024 + (n % 8) * 128 + 2 * kk)] for kk in range(16)]
                          for n in range(bn)])
            s += a @ b.T
        ok &= np.array_equal(s, q[wg * 64:wg * 64 + 64] @ k.T)
        p = (s % 5) - 2
        o = np.zeros((64, hd), dtype=np.int64)
        lbo, sbo = bn * 128, 1024
        for kk in range(bn // 16):  # hp_pack_p + hp_pv
            a = np.zeros((64, 16), dtype=np.int64)
            for w in range(4):
                for lane in range(32):
                    g, t = lane >> 2, lane & 3
                    d = [0] * (bn // 2)
                    for i in range(bn // 8):
                        for e in range(2):
                            d[4 * i + e] = p[16 * w + g, 8 * i + 2 * t + e]
                            d[4 * i + 2 + e] = p[16 * w + g + 8, 8 * i + 2 * t + e]
                    regs = [(d[2 * r], d[2 * r + 1]) for r in range(4 * kk, 4 * kk + 4)]  # P[4kk + r]
                    # m64nNk16 A fragment: a0 = A[g][2t, 2t+1], a1 = A[g+8][..], a2 = A[g][8+2t, ..], a3 = A[g+8][8+..]
                    for ri, (mo, ko) in enumerate(((0, 0), (8, 0), (0, 8), (8, 8))):
                        for j in range(2):
                            a[16 * w + g + mo, ko + 2 * t + j] = regs[ri][j]
            start = vst + kk * 2048
            b = np.array([[mem[swz(start + 2 * (n % 64) + lbo * (n // 64) + 128 * (kx % 8) + sbo * (kx // 8))]
                           for kx in range(16)] for n in range(hd)])
            o += a @ b.T
        ok &= np.array_equal(o, p @ v)
    print("bf16 head_dim %d, BN %3d: S = Q K^T and O = P V %s" % (hd, bn, "exact" if ok else "WRONG"))
    return ok


def check_f8_convert(hd, bn):
    """attn_prefill_hopper.cu, FP8 pools on f16 tensor cores: hp_convert_kv's stores (128 producer threads, 16 codes
    -> two 16-byte f16 pieces) land where the bf16 path's tensor copies put the same element."""
    pr = hd // 16
    rstep, per = 128 // pr, bn * pr // 128
    got = {}
    for t in range(128):
        r0, e0 = t // pr, (t % pr) * 16
        j, sw = (e0 % 64) // 8, r0 & 7
        d = (e0 // 64) * (bn * 128) + r0 * 128
        for u in range(per):
            row = r0 + rstep * u
            for half, jj in ((0, j), (1, j + 1)):
                base = d + rstep * u * 128 + ((jj ^ sw) << 4)
                for i in range(8):
                    got[(row, e0 + 8 * half + i)] = base + 2 * i
    want = {(row, col): swz((col // 64) * (bn * 128) + row * 128 + (col % 64) * 2) for row in range(bn)
            for col in range(hd)}
    ok = got == want
    print("fp8->f16 head_dim %d, BN %3d: converted tile in the copy engine's layout %s" % (hd, bn,
          "exact" if ok else "WRONG"))
    return ok


def check(hd, valid, rng):
    mem = np.zeros(1 << 18, dtype=np.int64)
    q = rng.integers(-7, 8, size=(128, hd))
    k = rng.integers(-7, 8, size=(BN, hd))
    v = rng.integers(-7, 8, size=(BN, hd))
    off_q, off_k, off_v, off_t = 0, 1 << 16, 2 << 16, 3 << 16
    tpr = hd // 16
    rpp = 128 // tpr
    for wg in range(2):  # h8_quantize_q
        for t in range(128):
            e0 = (t % tpr) * 16
            for ps in range(64 // rpp):
                row = wg * 64 + ps * rpp + t // tpr
                base = off_q + (e0 >> 7) * CH_Q + row * 128 + ((((e0 & 127) >> 4) ^ (row & 7)) << 4)
                mem[base:base + 16] = q[row, e0:e0 + 16]
    for off, m in ((off_k, k), (off_v, v)):  # tensor copies (hp_tma_kv<HD/128, 128, 128>)
        for key in range(BN):
            for c in range(hd // 128):
                for b in range(128):
                    mem[swz(off + c * BN * 128 + key * 128 + b)] = m[key, c * 128 + b]
    for tt in range(96):  # h8_transpose_tile
        wq, lane = tt >> 5, tt & 31
        hl, t, d4 = lane & 1, (lane >> 1) & 3, 4 * ((lane >> 3) & 3)
        for qq in range(wq, hd // 4, 3):
            h = hl | ((qq & 3) << 1)
            dch = (qq >> 2) & 7
            d = d4 + 16 * (qq >> 2)
            sp = off_v + (qq >> 5) * (BN * 128) + (16 * h + 2 * t) * 128 + d4
            x = []
            for j in range(4):
                c = (j & 1) + 8 * (j >> 1)
                a = sp + c * 128 + ((dch ^ (2 * t + (j & 1))) << 4)
                x.append(list(mem[a:a + 4]) if 16 * h + 2 * t + c < valid else [0, 0, 0, 0])
            dp = off_t + d * 128 + 4 * t
            for i in range(4):
                a = dp + i * 128 + ((h ^ ((d4 + i) & 7)) << 4)
                mem[a:a + 4] = [x[j][i] for j in range(4)]
    ok = True
    for wg in range(2):  # h8_qk, h8_pack_p, h8_pv
        qwg = off_q + wg * 64 * 128
        s = np.zeros((64, BN), dtype=np.int64)
        for ks in range(hd // 32):
            oq = (ks >> 2) * CH_Q + (ks & 3) * 32
            ok_ = (ks >> 2) * (BN * 128) + (ks & 3) * 32
            a = np.array([[mem[swz(qwg + oq + (m // 8) * 1024 + (m % 8) * 128 + kk)] for kk in range(32)]
                          for m in range(64)])
            b = np.array([[mem[swz(off_k + ok_ + (n // 8) * 1024 + (n % 8) * 128 + kk)] for kk in range(32)]
                          for n in range(BN)])
            s += a @ b.T
        ok &= np.array_equal(s, q[wg * 64:wg * 64 + 64] @ k.T)
        p = (s % 5) - 2  # stand-in P values, any small integers
        o = np.zeros((64, hd), dtype=np.int64)
        for kk in range(BN // 32):
            a = np.zeros((64, 32), dtype=np.int64)
            for w in range(4):
                for lane in range(32):
                    g, t = lane >> 2, lane & 3
                    d = [0] * (BN // 2)
                    for i in range(BN // 8):
                        for e in range(2):
                            d[4 * i + e] = p[16 * w + g, 8 * i + 2 * t + e]
                            d[4 * i + 2 + e] = p[16 * w + g + 8, 8 * i + 2 * t + e]
                    r = d[16 * kk:16 * kk + 16]
                    regs = ((r[0], r[1], r[4], r[5]), (r[2], r[3], r[6], r[7]), (r[8], r[9], r[12], r[13]),
                            (r[10], r[11], r[14], r[15]))
                    for ri, (mo, ko) in enumerate(((0, 0), (8, 0), (0, 16), (8, 16))):
                        for j in range(4):
                            a[16 * w + g + mo, ko + 4 * t + j] = regs[ri][j]
            b = np.array([[mem[swz(off_t + 32 * kk + (n // 8) * 1024 + (n % 8) * 128 + kx)] for kx in range(32)]
                          for n in range(hd)])
            o += a @ b.T
        vz = v.copy()
        vz[valid:] = 0
        ok &= np.array_equal(o, p @ vz)
    print("e4m3 head_dim %d, keys valid %3d: S = Q K^T and O = P V %s" % (hd, valid, "exact" if ok else "WRONG"))
    return ok


def main():
    rng = np.random.default_rng(1)
    good = all([check_bf16(hd, bn, rng) for hd, bn in ((256, 80), (128, 128))])
    good &= all([check_f8_convert(hd, bn) for hd, bn in ((256, 64), (128, 128))])
    good &= all([check(hd, valid, rng) for hd in (256, 128) for valid in (BN, 100)])
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
