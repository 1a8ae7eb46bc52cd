/*
 * libFuzzer target for POSTURE_QUERY and POSTURE (FUZZ_MSG, set per target by
 * fuzz/meson.build): the input is the body, wrapped in a valid control header; a decoded
 * message must walk cleanly, keep the bounds its readers rely on and re-encode stably.
 */
#include <stdlib.h>
#include <string.h>

#include "lib/wire.h"

#ifndef FUZZ_MSG
#error "build with -DFUZZ_MSG=MT_POSTURE_QUERY or MT_POSTURE"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

#define need(c)                                                                                    \
	do {                                                                                       \
		if (!(c))                                                                          \
			abort();                                                                   \
	} while (0)

static volatile unsigned sink;

/* Printable ASCII of 1..max bytes, read whole so that ASan sees a view past the frame. */
static void text(struct mt_bytes b, unsigned max)
{
	unsigned s = 0;

	need(b.p != NULL && b.len >= 1 && b.len <= max);
	for (uint16_t i = 0; i < b.len; i++) {
		need(b.p[i] >= 0x20 && b.p[i] <= 0x7e);
		s += b.p[i];
	}
	sink += s;
}

static bool same(struct mt_bytes a, struct mt_bytes b)
{
	return a.len == b.len && memcmp(a.p, b.p, a.len) == 0;
}

/* Walks the repeated items back into arrays (the encoder's input), checking each. */
static void walk(struct mt_msg *m)
{
	static struct mt_bytes files[MT_POSTURE_FILES_MAX], procs[MT_POSTURE_PROCS_MAX];
	static struct mt_file_fact facts[MT_POSTURE_FILES_MAX];
	bool query = FUZZ_MSG == MT_POSTURE_QUERY;
	unsigned nf = 0, np = 0;
	struct mt_file_fact f;
	struct mt_iter it;
	struct mt_bytes t;
	uint16_t type;

	wire_posture_iter(query ? &m->u.posture_query.attrs : &m->u.posture.attrs, &it);
	while (wire_posture_next(&it, &type, &t, &f)) {
		if (type == MT_A_PROCESS) {
			text(t, MT_PROCESS_MAX);
			need(np < MT_POSTURE_PROCS_MAX);
			for (unsigned i = 0; i < np; i++)
				need(!same(procs[i], t));
			procs[np++] = t;
			continue;
		}
		need(type == (query ? MT_A_FILE : MT_A_FILE_FACT));
		if (!query)
			t = f.path;
		text(t, MT_PATH_MAX);
		need(t.p[0] == '/');
		need(nf < MT_POSTURE_FILES_MAX);
		for (unsigned i = 0; i < nf; i++)
			need(!same(query ? files[i] : facts[i].path, t));
		files[nf] = t;
		facts[nf++] = f;
	}
	if (query) {
		need(m->u.posture_query.files == NULL && m->u.posture_query.nfiles == 0);
		m->u.posture_query.files = files;
		m->u.posture_query.nfiles = (uint16_t)nf;
		m->u.posture_query.procs = procs;
		m->u.posture_query.nprocs = (uint16_t)np;
	} else {
		need(m->u.posture.files == NULL && m->u.posture.nfiles == 0);
		need(m->u.posture.disk_encrypted <= 1);
		if (m->u.posture.kernel.len)
			text(m->u.posture.kernel, MT_KERNEL_MAX);
		if (m->u.posture.os.len)
			text(m->u.posture.os, MT_OS_MAX);
		m->u.posture.files = facts;
		m->u.posture.nfiles = (uint16_t)nf;
		m->u.posture.procs = procs;
		m->u.posture.nprocs = (uint16_t)np;
	}
}

static void check_frame(const uint8_t *f, size_t len)
{
	static uint8_t b1[MT_FRAME_MAX], b2[MT_FRAME_MAX];
	struct mt_msg m1, m2;
	const char *why = NULL;
	int n1, n2;

	if (wire_decode(f, len, &m1, &why) < 0) {
		need(why != NULL);
		return;
	}
	need(m1.hdr.type == FUZZ_MSG && m1.hdr.len == len - MT_FRAME_HDR);
	walk(&m1);
	n1 = wire_encode(b1, sizeof(b1), &m1);
	/* Decoding drops only unknown attributes, so the canonical form is never longer. */
	need(n1 >= MT_FRAME_HDR && (size_t)n1 <= len);
	need(wire_decode(b1, (size_t)n1, &m2, &why) == 0);
	walk(&m2);
	n2 = wire_encode(b2, sizeof(b2), &m2);
	need(n2 == n1 && memcmp(b1, b2, (size_t)n1) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
	uint32_t w[4];
	uint8_t *frame;

	if (n > MT_FRAME_MAX_PAYLOAD)
		return 0;
	w[0] = htobe32((uint32_t)MT_WIRE_VERSION << 24 | (uint32_t)FUZZ_MSG << 16);
	w[1] = 0;
	w[2] = htobe32((uint32_t)n);
	w[3] = 0;
	frame = malloc(MT_FRAME_HDR + n); /* exact size: ASan sees any over-read */
	need(frame != NULL);
	memcpy(frame, w, sizeof(w));
	if (n)
		memcpy(frame + MT_FRAME_HDR, d, n);
	check_frame(frame, MT_FRAME_HDR + n);
	free(frame);
	return 0;
}
