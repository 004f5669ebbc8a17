/* A decoder of raw LZMA (LZMA1, as Python's lzma.FORMAT_RAW writes it), for the images.
 *
 * The build stores a library's images in blocks of about 128 KiB, each compressed as one LZMA
 * stream (aot/pack.py): variants of one kernel share most of their bytes, and LZMA finds
 * them across a block where the wheel's deflate (a 32 KiB window) would store each image
 * whole.  Decoding is resumable: fa_lzma_run(d, n) decodes until at least n bytes of the
 * block exist, so loading an image decodes its block only as far as the image ends, and
 * images loaded in order decode each block once.
 *
 * The format: a range coder over adaptive binary probabilities; a literal, a match (length,
 * then distance) or a repeat of one of the last four distances, chosen by a 12-state model;
 * literal contexts from lc high bits of the previous byte and lp low bits of the position,
 * and position states from pb low bits.  Every read stays inside the stream, every write
 * inside the block, and every copy inside the decoded bytes: a malformed stream stops with
 * a reason, never reads or writes out of bounds. */
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum { FA_LZMA_LITERAL_STATES = 16 }; /* lc + lp <= 4 */

typedef struct {
  uint16_t choice, choice2, low[16][8], mid[16][8], high[256];
} fa_lzma_len_t;

typedef struct {
  const unsigned char* in; /* the stream */
  size_t in_size, in_at;
  unsigned char* out; /* the block (the dictionary too) */
  size_t out_size, out_at;
  const char* error; /* why decoding stopped early, or NULL */
  uint32_t range, code, state, rep[4];
  unsigned lc, lp, pb;
  struct { /* every probability, all uint16_t (no padding) */
    uint16_t literal[FA_LZMA_LITERAL_STATES][0x300];
    uint16_t is_match[12][16], is_rep[12], is_rep_g0[12], is_rep_g1[12], is_rep_g2[12], is_rep0_long[12][16];
    uint16_t slot[4][64], special[115], align[16];
    fa_lzma_len_t match_len, rep_len;
  } p;
} fa_lzma_t;

static inline unsigned char fa_lzma_byte(fa_lzma_t* d) {
  if (d->in_at < d->in_size) return d->in[d->in_at++];
  d->error = "the stream ends early";
  return 0;
}

static inline void fa_lzma_normalize(fa_lzma_t* d) {
  if (d->range < (1u << 24)) d->range <<= 8, d->code = (d->code << 8) | fa_lzma_byte(d);
}

/* One bit of probability *p (of a 0, in 1/2048ths), which adapts toward the bit seen. */
static inline unsigned fa_lzma_bit(fa_lzma_t* d, uint16_t* p) {
  const uint32_t bound = (d->range >> 11) * *p;
  unsigned bit;
  if (d->code < bound) d->range = bound, *p += (2048 - *p) >> 5, bit = 0;
  else d->range -= bound, d->code -= bound, *p -= *p >> 5, bit = 1;
  fa_lzma_normalize(d);
  return bit;
}

/* `bits` bits of even probability, most significant first. */
static inline uint32_t fa_lzma_direct(fa_lzma_t* d, unsigned bits) {
  uint32_t r = 0;
  while (bits--) {
    d->range >>= 1;
    const uint32_t bit = d->code >= d->range;
    if (bit) d->code -= d->range;
    r = (r << 1) | bit;
    fa_lzma_normalize(d);
  }
  return r;
}

/* A `bits`-bit number through a binary tree of probabilities p[1 .. 2^bits - 1]. */
static inline uint32_t fa_lzma_tree(fa_lzma_t* d, uint16_t* p, unsigned bits) {
  uint32_t m = 1;
  for (unsigned i = 0; i < bits; ++i) m = (m << 1) | fa_lzma_bit(d, &p[m]);
  return m - (1u << bits);
}

/* The same, least significant bit first. */
static inline uint32_t fa_lzma_tree_reverse(fa_lzma_t* d, uint16_t* p, unsigned bits) {
  uint32_t m = 1, r = 0;
  for (unsigned i = 0; i < bits; ++i) {
    const unsigned bit = fa_lzma_bit(d, &p[m]);
    m = (m << 1) | bit;
    r |= (uint32_t)bit << i;
  }
  return r;
}

/* A match length less 2 (0 .. 271). */
static inline uint32_t fa_lzma_length(fa_lzma_t* d, fa_lzma_len_t* l, unsigned pos_state) {
  if (!fa_lzma_bit(d, &l->choice)) return fa_lzma_tree(d, l->low[pos_state], 3);
  if (!fa_lzma_bit(d, &l->choice2)) return 8 + fa_lzma_tree(d, l->mid[pos_state], 3);
  return 16 + fa_lzma_tree(d, l->high, 8);
}

/* A match distance less 1: a 6-bit slot (by length) gives the top two bits and the bit count;
 * low bits come from probability trees for short distances, else as direct bits with the
 * last four through `align`. */
static inline uint32_t fa_lzma_distance(fa_lzma_t* d, uint32_t length) {
  const uint32_t slot = fa_lzma_tree(d, d->p.slot[length < 3 ? length : 3], 6);
  if (slot < 4) return slot;
  const unsigned bits = (slot >> 1) - 1;
  const uint32_t base = (2 | (slot & 1)) << bits;
  if (slot < 14) return base + fa_lzma_tree_reverse(d, d->p.special + base - slot, bits);
  return base + (fa_lzma_direct(d, bits - 4) << 4) + fa_lzma_tree_reverse(d, d->p.align, 4);
}

/* Start decoding `in` (a raw LZMA stream with properties byte `props` = (pb*5 + lp)*9 + lc)
 * into `out` (the block's out_size bytes).  0, or -1 with d->error set. */
static inline int fa_lzma_init(fa_lzma_t* d, unsigned props, const unsigned char* in, size_t in_size,
                               unsigned char* out, size_t out_size) {
  memset(d, 0, sizeof *d);
  d->in = in, d->in_size = in_size, d->out = out, d->out_size = out_size;
  d->lc = props % 9, d->lp = props / 9 % 5, d->pb = props / 45;
  if (props >= 9 * 5 * 5 || d->lc + d->lp > 4) return d->error = "unsupported stream properties", -1;
  uint16_t* p = (uint16_t*)&d->p;
  for (size_t i = 0; i < sizeof d->p / sizeof *p; ++i) p[i] = 1024; /* every probability 1/2 */
  d->range = 0xFFFFFFFFu;
  if (fa_lzma_byte(d) != 0) d->error = "the stream does not start with 0";
  for (int i = 0; i < 4; ++i) d->code = (d->code << 8) | fa_lzma_byte(d);
  return d->error ? -1 : 0;
}

/* Decode until at least `until` bytes of the block exist (or all of it).  0, or -1 with
 * d->error set (then nothing more can be decoded). */
static inline int fa_lzma_run(fa_lzma_t* d, size_t until) {
  if (until > d->out_size) until = d->out_size;
  unsigned char* out = d->out;
  uint32_t* rep = d->rep;
  while (d->out_at < until && !d->error) {
    const size_t at = d->out_at;
    const unsigned pos_state = at & ((1u << d->pb) - 1);
    if (!fa_lzma_bit(d, &d->p.is_match[d->state][pos_state])) {
      /* a literal, coded against the byte at the last distance after a match */
      const unsigned prev = at ? out[at - 1] : 0;
      uint16_t* p = d->p.literal[((at & ((1u << d->lp) - 1)) << d->lc) + (prev >> (8 - d->lc))];
      unsigned symbol = 1;
      if (d->state >= 7) {
        unsigned match = out[at - rep[0] - 1];
        do {
          const unsigned match_bit = (match >> 7) & 1;
          match <<= 1;
          const unsigned bit = fa_lzma_bit(d, &p[((1 + match_bit) << 8) + symbol]);
          symbol = (symbol << 1) | bit;
          if (bit != match_bit) break;
        } while (symbol < 0x100);
      }
      while (symbol < 0x100) symbol = (symbol << 1) | fa_lzma_bit(d, &p[symbol]);
      out[d->out_at++] = (unsigned char)symbol;
      d->state = d->state < 4 ? 0 : d->state < 10 ? d->state - 3 : d->state - 6;
      continue;
    }
    uint32_t length;
    if (fa_lzma_bit(d, &d->p.is_rep[d->state])) {
      if (at == 0) return d->error = "a repeated match before any byte", -1;
      if (!fa_lzma_bit(d, &d->p.is_rep_g0[d->state])) {
        if (!fa_lzma_bit(d, &d->p.is_rep0_long[d->state][pos_state])) { /* one byte at the last distance */
          d->state = d->state < 7 ? 9 : 11;
          out[d->out_at++] = out[at - rep[0] - 1];
          continue;
        }
      } else {
        uint32_t distance;
        if (!fa_lzma_bit(d, &d->p.is_rep_g1[d->state])) {
          distance = rep[1];
        } else {
          if (!fa_lzma_bit(d, &d->p.is_rep_g2[d->state])) {
            distance = rep[2];
          } else {
            distance = rep[3];
            rep[3] = rep[2];
          }
          rep[2] = rep[1];
        }
        rep[1] = rep[0];
        rep[0] = distance;
      }
      length = fa_lzma_length(d, &d->p.rep_len, pos_state);
      d->state = d->state < 7 ? 8 : 11;
    } else {
      rep[3] = rep[2], rep[2] = rep[1], rep[1] = rep[0];
      length = fa_lzma_length(d, &d->p.match_len, pos_state);
      d->state = d->state < 7 ? 7 : 10;
      rep[0] = fa_lzma_distance(d, length);
      if (rep[0] == 0xFFFFFFFFu) return d->error = "the stream ends before the block", -1;
    }
    length += 2;
    if (rep[0] >= at) return d->error = "a match before the block's start", -1;
    if (length > d->out_size - at) return d->error = "a match past the block's end", -1;
    for (uint32_t i = 0; i < length; ++i) out[at + i] = out[at + i - rep[0] - 1]; /* may overlap */
    d->out_at += length;
  }
  return d->error ? -1 : 0;
}
