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

/* The range decoder.  fa_lzma_run works on a local copy, which the compiler can keep in
 * registers (the block's bytes are written through a char pointer, which may alias anything
 * reached through a pointer). */
typedef struct {
  const unsigned char* in; /* the stream */
  size_t in_size, in_at;
  uint32_t range, code;
  int cut; /* the stream ended before the block */
} fa_lzma_rc_t;

typedef struct {
  fa_lzma_rc_t rc;
  unsigned char* out; /* the block (the dictionary too) */
  size_t out_size, out_at;
  const char* error; /* why decoding stopped early, or NULL */
  uint32_t state, rep[4];
  unsigned lc, lp, pb;
  struct { /* every probability, all uint16_t (no padding) */
    uint16_t literal[FA_LZMA_LITERAL_STATES][0x300];
    uint16_t is_match[12][16], is_rep[12], is_rep_g0[12], is_rep_g1[12], is_rep_g2[12], is_rep0_long[12][16];
    uint16_t slot[4][64], special[115], align[16];
    fa_lzma_len_t match_len, rep_len;
  } p;
} fa_lzma_t;

static inline uint32_t fa_lzma_byte(fa_lzma_rc_t* rc) {
  if (rc->in_at < rc->in_size) return rc->in[rc->in_at++];
  rc->cut = 1;
  return 0;
}

static inline void fa_lzma_normalize(fa_lzma_rc_t* rc) {
  if (rc->range < (1u << 24)) rc->range <<= 8, rc->code = (rc->code << 8) | fa_lzma_byte(rc);
}

/* One bit of probability *p (of a 0, in 1/2048ths), which adapts toward the bit seen. */
static inline unsigned fa_lzma_bit(fa_lzma_rc_t* rc, uint16_t* p) {
  const uint32_t bound = (rc->range >> 11) * *p;
  unsigned bit;
  if (rc->code < bound) rc->range = bound, *p += (2048 - *p) >> 5, bit = 0;
  else rc->range -= bound, rc->code -= bound, *p -= *p >> 5, bit = 1;
  fa_lzma_normalize(rc);
  return bit;
}

/* `bits` bits of even probability, most significant first. */
static inline uint32_t fa_lzma_direct(fa_lzma_rc_t* rc, unsigned bits) {
  uint32_t r = 0;
  while (bits--) {
    rc->range >>= 1;
    const uint32_t bit = rc->code >= rc->range;
    if (bit) rc->code -= rc->range;
    r = (r << 1) | bit;
    fa_lzma_normalize(rc);
  }
  return r;
}

/* A `bits`-bit number through a binary tree of probabilities p[1 .. 2^bits - 1]. */
static inline uint32_t fa_lzma_tree(fa_lzma_rc_t* rc, uint16_t* p, unsigned bits) {
  uint32_t m = 1;
  for (unsigned i = 0; i < bits; ++i) m = (m << 1) | fa_lzma_bit(rc, &p[m]);
  return m - (1u << bits);
}

/* The same, least significant bit first. */
static inline uint32_t fa_lzma_tree_reverse(fa_lzma_rc_t* rc, uint16_t* p, unsigned bits) {
  uint32_t m = 1, r = 0;
  for (unsigned i = 0; i < bits; ++i) {
    const unsigned bit = fa_lzma_bit(rc, &p[m]);
    m = (m << 1) | bit;
    r |= (uint32_t)bit << i;
  }
  return r;
}

/* A match length less 2 (0 .. 271). */
static inline uint32_t fa_lzma_length(fa_lzma_rc_t* rc, fa_lzma_len_t* l, unsigned pos_state) {
  if (!fa_lzma_bit(rc, &l->choice)) return fa_lzma_tree(rc, l->low[pos_state], 3);
  if (!fa_lzma_bit(rc, &l->choice2)) return 8 + fa_lzma_tree(rc, l->mid[pos_state], 3);
  return 16 + fa_lzma_tree(rc, l->high, 8);
}

/* A match distance less 1: a 6-bit slot (by length) gives the top two bits and the bit count;
 * low bits come from probability trees for short distances, else as direct bits with the
 * last four through `align`. */
static inline uint32_t fa_lzma_distance(fa_lzma_rc_t* rc, fa_lzma_t* d, uint32_t length) {
  const uint32_t slot = fa_lzma_tree(rc, d->p.slot[length < 3 ? length : 3], 6);
  if (slot < 4) return slot;
  const unsigned bits = (slot >> 1) - 1;
  const uint32_t base = (2 | (slot & 1)) << bits;
  if (slot < 14) return base + fa_lzma_tree_reverse(rc, d->p.special + base - slot, bits);
  return base + (fa_lzma_direct(rc, bits - 4) << 4) + fa_lzma_tree_reverse(rc, d->p.align, 4);
}

/* Start decoding `in` (a raw LZMA stream with properties byte `props` = (pb*5 + lp)*9 + lc)
 * into `out` (the block's out_size bytes).  0, or -1 with d->error set. */
static inline int fa_lzma_init(fa_lzma_t* d, unsigned props, const unsigned char* in, size_t in_size,
                               unsigned char* out, size_t out_size) {
  memset(d, 0, sizeof *d);
  d->rc.in = in, d->rc.in_size = in_size, d->out = out, d->out_size = out_size;
  d->lc = props % 9, d->lp = props / 9 % 5, d->pb = props / 45;
  if (props >= 9 * 5 * 5 || d->lc + d->lp > 4) return d->error = "unsupported stream properties", -1;
  uint16_t* p = (uint16_t*)&d->p;
  for (size_t i = 0; i < sizeof d->p / sizeof *p; ++i) p[i] = 1024; /* every probability 1/2 */
  d->rc.range = 0xFFFFFFFFu;
  if (fa_lzma_byte(&d->rc) != 0) d->error = "the stream does not start with 0";
  for (int i = 0; i < 4; ++i) d->rc.code = (d->rc.code << 8) | fa_lzma_byte(&d->rc);
  if (d->rc.cut) d->error = "the stream ends early";
  return d->error ? -1 : 0;
}

/* Decode until at least `until` bytes of the block exist (or all of it).  0, or -1 with
 * d->error set (then nothing more can be decoded). */
static inline int fa_lzma_run(fa_lzma_t* d, size_t until) {
  if (d->error) return -1;
  if (until > d->out_size) until = d->out_size;
  fa_lzma_rc_t rc = d->rc;
  unsigned char* const out = d->out;
  const size_t size = d->out_size;
  size_t at = d->out_at;
  uint32_t state = d->state, rep0 = d->rep[0], rep1 = d->rep[1], rep2 = d->rep[2], rep3 = d->rep[3];
  const unsigned lc = d->lc, lp_mask = (1u << d->lp) - 1, pb_mask = (1u << d->pb) - 1;
  const char* error = NULL;
  while (at < until && !rc.cut) {
    const unsigned pos_state = at & pb_mask;
    if (!fa_lzma_bit(&rc, &d->p.is_match[state][pos_state])) {
      /* a literal, coded against the byte at the last distance after a match */
      const unsigned prev = at ? out[at - 1] : 0;
      uint16_t* p = d->p.literal[((at & lp_mask) << lc) + (prev >> (8 - lc))];
      unsigned symbol = 1;
      if (state >= 7) {
        unsigned match = out[at - rep0 - 1];
        do {
          const unsigned match_bit = (match >> 7) & 1;
          match <<= 1;
          const unsigned bit = fa_lzma_bit(&rc, &p[((1 + match_bit) << 8) + symbol]);
          symbol = (symbol << 1) | bit;
          if (bit != match_bit) break;
        } while (symbol < 0x100);
      }
      while (symbol < 0x100) symbol = (symbol << 1) | fa_lzma_bit(&rc, &p[symbol]);
      out[at++] = (unsigned char)symbol;
      state = state < 4 ? 0 : state < 10 ? state - 3 : state - 6;
      continue;
    }
    uint32_t length;
    if (fa_lzma_bit(&rc, &d->p.is_rep[state])) {
      if (at == 0) {
        error = "a repeated match before any byte";
        break;
      }
      if (!fa_lzma_bit(&rc, &d->p.is_rep_g0[state])) {
        if (!fa_lzma_bit(&rc, &d->p.is_rep0_long[state][pos_state])) { /* one byte at the last distance */
          state = state < 7 ? 9 : 11;
          out[at] = out[at - rep0 - 1];
          ++at;
          continue;
        }
      } else {
        uint32_t distance;
        if (!fa_lzma_bit(&rc, &d->p.is_rep_g1[state])) {
          distance = rep1;
        } else {
          if (!fa_lzma_bit(&rc, &d->p.is_rep_g2[state])) {
            distance = rep2;
          } else {
            distance = rep3;
            rep3 = rep2;
          }
          rep2 = rep1;
        }
        rep1 = rep0;
        rep0 = distance;
      }
      length = fa_lzma_length(&rc, &d->p.rep_len, pos_state);
      state = state < 7 ? 8 : 11;
    } else {
      rep3 = rep2, rep2 = rep1, rep1 = rep0;
      length = fa_lzma_length(&rc, &d->p.match_len, pos_state);
      state = state < 7 ? 7 : 10;
      rep0 = fa_lzma_distance(&rc, d, length);
      if (rep0 == 0xFFFFFFFFu) {
        error = "the stream ends before the block";
        break;
      }
    }
    length += 2;
    if (rep0 >= at) {
      error = "a match before the block's start";
      break;
    }
    if (length > size - at) {
      error = "a match past the block's end";
      break;
    }
    const unsigned char* from = out + at - rep0 - 1;
    for (uint32_t i = 0; i < length; ++i) out[at + i] = from[i]; /* may overlap */
    at += length;
  }
  d->rc = rc, d->out_at = at, d->state = state;
  d->rep[0] = rep0, d->rep[1] = rep1, d->rep[2] = rep2, d->rep[3] = rep3;
  if (rc.cut && !error) error = "the stream ends early";
  d->error = error;
  return error ? -1 : 0;
}
