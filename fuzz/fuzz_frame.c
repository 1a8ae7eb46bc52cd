/*
 * libFuzzer target for lib/wire: cuts frames from the input as a receive stream would,
 * decodes each, and checks that a decoded frame re-encodes to a stable canonical form.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lib/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

#define MAX_SEGS   1024
#define MAX_RANGES 2048

static struct mt_segment segs[MAX_SEGS];
static struct mt_port_range ranges[MAX_RANGES];

/* A decoded CONFIG hands out iterators; the encoder takes arrays. */
static void config_to_arrays(struct mt_msg *m)
{
	struct mt_config *c = &m->u.config;
	struct mt_iter it, rit;
	unsigned ns = 0, nr = 0;

	wire_config_segments(c, &it);
	while (ns < MAX_SEGS && wire_segment_next(&it, &segs[ns])) {
		struct mt_segment *s = &segs[ns++];
		unsigned first = nr;

		wire_segment_ranges(s, &rit);
		while (nr < MAX_RANGES && wire_range_next(&rit, &ranges[nr]))
			nr++;
		if (nr - first != s->nranges)
			abort();
		s->ranges = &ranges[first];
	}
	if (ns != c->nsegs)
		abort();
	c->segs = segs;
}

/* decode -> encode must succeed, and encoding what that decodes must give the same bytes. */
static void check_frame(const uint8_t *f, size_t len)
{
	static uint8_t b1[MT_FRAME_MAX], b2[MT_FRAME_MAX];
	struct mt_msg m1, m2;
	const char *why = NULL;
	int n1, n2;

	if (wire_decode(f, len, &m1, &why) < 0) {
		if (!why)
			abort();
		return;
	}
	if (m1.hdr.type == MT_CONFIG)
		config_to_arrays(&m1);
	n1 = wire_encode(b1, sizeof(b1), &m1);
	/* Decoding drops only unknown attributes, so the canonical form is never longer. */
	if (n1 < MT_FRAME_HDR || (size_t)n1 > len)
		abort();
	/* Header fields pass through unchanged. */
	if (memcmp(b1, f, 8) != 0 || memcmp(b1 + 12, f + 12, 4) != 0)
		abort();
	if (wire_decode(b1, (size_t)n1, &m2, &why) < 0)
		abort();
	if (m2.hdr.type == MT_CONFIG)
		config_to_arrays(&m2);
	n2 = wire_encode(b2, sizeof(b2), &m2);
	if (n2 != n1 || memcmp(b1, b2, (size_t)n1) != 0)
		abort();
	/* A frame already in canonical form is reproduced byte for byte. */
	if ((size_t)n1 == len && m1.hdr.type == MT_DATA && memcmp(b1, f, len) != 0)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
	size_t off = 0;

	while (off < n) {
		struct mt_hdr h;
		struct mt_msg m;
		const char *why = NULL;
		uint8_t *frame;
		size_t flen;
		int rc = wire_peek_header(d + off, n - off, &h, &why);

		if (rc == -EAGAIN)
			break;
		if (rc < 0) {
			if (!why || (rc != -EPROTO && rc != -EMSGSIZE))
				abort();
			break;
		}
		flen = wire_frame_len(&h);
		if (flen > n - off) {
			if (wire_decode(d + off, n - off, &m, &why) != -EPROTO || !why)
				abort();
			break;
		}
		/* An exact-size copy, so that ASan sees any read past the frame. */
		frame = malloc(flen);
		if (!frame)
			abort();
		memcpy(frame, d + off, flen);
		check_frame(frame, flen);
		free(frame);
		off += flen;
	}
	return 0;
}
