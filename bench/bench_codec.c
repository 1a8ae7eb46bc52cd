/*
 * Microbenchmark of lib/wire on the data path: DATA frame encode and decode, and header
 * decode alone. Prints key=value lines for tools/bench. Usage: bench_codec [seconds-per-figure]
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/wire.h"

#define BATCH 4096

static volatile uint64_t sink;
static uint8_t frame[MT_FRAME_MAX];
static uint8_t payload[MT_FRAME_MAX_PAYLOAD];

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

enum op {
	OP_ENCODE,     /* wire_encode: header and a copy of the payload */
	OP_ENCODE_HDR, /* wire_encode_data_hdr: header in front of payload already in place */
	OP_DECODE,     /* wire_peek_header + wire_decode of a whole frame */
	OP_PEEK,       /* wire_peek_header alone */
};

static const char *const op_names[] = {"encode", "encode_hdr", "decode", "peek"};

/* One batch; every result feeds sink, and the id changes, so nothing is hoisted. */
static int run_batch(enum op op, size_t plen, uint32_t base)
{
	struct mt_msg m = {.hdr = {.type = MT_DATA}, .u.data = {payload, (uint16_t)plen}};
	uint64_t acc = 0;

	for (uint32_t i = 0; i < BATCH; i++) {
		struct mt_hdr h;
		struct mt_msg d;
		const char *why;
		int rc;

		switch (op) {
		case OP_ENCODE:
			m.hdr.id = base + i + 1;
			m.hdr.seq = i;
			rc = wire_encode(frame, sizeof(frame), &m);
			if (rc < 0)
				return rc;
			acc += (uint64_t)rc + frame[7];
			break;
		case OP_ENCODE_HDR:
			wire_encode_data_hdr(frame, base + i + 1, i, (uint32_t)plen);
			acc += frame[7];
			break;
		case OP_DECODE:
			wire_set_id(frame, base + i + 1);
			rc = wire_peek_header(frame, MT_FRAME_HDR + plen, &h, &why);
			if (rc < 0 || (rc = wire_decode(frame, MT_FRAME_HDR + plen, &d, &why)) < 0)
				return rc;
			acc += d.hdr.id + d.u.data.len;
			break;
		case OP_PEEK:
			wire_set_id(frame, base + i + 1);
			rc = wire_peek_header(frame, MT_FRAME_HDR + plen, &h, &why);
			if (rc < 0)
				return rc;
			acc += h.id + h.len;
			break;
		}
		__asm__ volatile("" : : "r"(frame) : "memory");
	}
	sink += acc;
	return 0;
}

static int figure(enum op op, size_t fsize, double seconds)
{
	size_t plen = fsize - MT_FRAME_HDR;
	uint64_t frames = 0;
	double t0, t1;
	int rc;

	wire_encode_data_hdr(frame, 1, 0, (uint32_t)plen);
	memcpy(frame + MT_FRAME_HDR, payload, plen);
	t0 = now_ns();
	do {
		if ((rc = run_batch(op, plen, (uint32_t)frames)) < 0)
			return rc;
		frames += BATCH;
		t1 = now_ns();
	} while (t1 - t0 < seconds * 1e9);
	printf("bench=codec op=%s size=%zu frames=%llu ns_per_frame=%.2f frames_per_s=%.0f "
	       "mbytes_per_s=%.1f\n",
	       op_names[op], fsize, (unsigned long long)frames, (t1 - t0) / (double)frames,
	       (double)frames * 1e9 / (t1 - t0), (double)frames * (double)fsize * 1e3 / (t1 - t0));
	fflush(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	static const size_t sizes[] = {64, MT_FRAME_MAX};
	double seconds = 1.0;
	char *end;

	if (argc > 2 || (argc == 2 &&
	                 (seconds = strtod(argv[1], &end), *end || seconds <= 0 || seconds > 60))) {
		fprintf(stderr, "usage: %s [seconds per figure, 0 < s <= 60]\n", argv[0]);
		return 2;
	}
	for (size_t i = 0; i < sizeof(payload); i++)
		payload[i] = (uint8_t)i;
	for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
		for (int op = OP_ENCODE; op <= OP_DECODE; op++) {
			if (figure(op, sizes[s], seconds) < 0) {
				fprintf(stderr, "bench_codec: codec refused a valid frame\n");
				return 1;
			}
		}
	}
	if (figure(OP_PEEK, MT_FRAME_HDR, seconds) < 0)
		return 1;
	return 0;
}
