/*
 * Device posture facts the broker asks for (POSTURE_QUERY): kernel, OS, root disk
 * encryption, queried files' SHA-256 and running processes, all read under a root prefix.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "log.h"

#define POSTURE_PATH_MAX 4096
#define POSTURE_READ_MAX (64U * 1024) /* mountinfo, os-release: larger is cut */
#define POSTURE_DM_DEPTH 8            /* dm devices stacked below the root one */

/* A queried file and what was found the last time it was looked at. */
struct posture_file {
	char path[MT_PATH_MAX + 1];
	bool have; /* stat key and result below are valid */
	bool present;
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime, ctime;
	uint8_t sha256[MT_SHA256_LEN];
};

struct posture {
	char root[POSTURE_PATH_MAX];
	uint64_t version;
	unsigned nfiles, nprocs;
	unsigned long hashes;
	struct posture_file files[MT_POSTURE_FILES_MAX];
	char procs[MT_POSTURE_PROCS_MAX][MT_PROCESS_MAX + 1];
};

static int root_path(const char *root, const char *path, char *out, size_t size)
{
	int n = snprintf(out, size, "%s%s", root ? root : "", path);

	return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

/* Reads up to size - 1 bytes of root + path, NUL-terminated; the length or -errno. */
static ssize_t read_small(const char *root, const char *path, char *buf, size_t size)
{
	char full[POSTURE_PATH_MAX];
	size_t got = 0;
	ssize_t n;
	int fd, ret;

	if ((ret = root_path(root, path, full, sizeof(full))) < 0)
		return ret;
	fd = open(full, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	while (got < size - 1) {
		n = read(fd, buf + got, size - 1 - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			ret = -errno;
			close(fd);
			return ret;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	buf[got] = '\0';
	return (ssize_t)got;
}

/* Bytes outside printable ASCII would be refused on the wire. */
static void printable(char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
			*s = '?';
}

int posture_kernel(const char *root, char *out, size_t size)
{
	struct utsname u;
	char buf[256];
	ssize_t n;

	if (!root || !*root) {
		if (uname(&u) < 0)
			return -errno;
		snprintf(out, size, "%s", u.release);
	} else {
		/* The same string as uname's release, readable under a fake root. */
		n = read_small(root, "/proc/sys/kernel/osrelease", buf, sizeof(buf));
		if (n < 0)
			return (int)n;
		buf[strcspn(buf, "\n")] = '\0';
		snprintf(out, size, "%s", buf);
	}
	printable(out);
	return *out ? 0 : -ENOENT;
}

int posture_parse_os_release(const char *text, size_t len, char *out, size_t size)
{
	const char *p = text, *end = text + len;

	if (size == 0)
		return -EINVAL;
	while (p < end) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		const char *v;
		size_t o = 0;
		char q = 0;

		if (!eol)
			eol = end;
		if ((size_t)(eol - p) < 12 || memcmp(p, "PRETTY_NAME=", 12) != 0) {
			p = eol + 1;
			continue;
		}
		v = p + 12;
		if (v < eol && (*v == '"' || *v == '\''))
			q = *v++;
		for (; v < eol && o < size - 1; v++) {
			if (q && *v == q)
				break;
			/* Inside double quotes a backslash escapes the next character. */
			if (q == '"' && *v == '\\' && v + 1 < eol)
				v++;
			out[o++] = *v;
		}
		out[o] = '\0';
		printable(out);
		return o ? 0 : -ENOENT;
	}
	out[0] = '\0';
	return -ENOENT;
}

int posture_os(const char *root, char *out, size_t size)
{
	static const char *const paths[] = {"/etc/os-release", "/usr/lib/os-release"};
	char buf[POSTURE_READ_MAX];
	ssize_t n = -ENOENT;

	for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
		n = read_small(root, paths[i], buf, sizeof(buf));
		if (n >= 0)
			return posture_parse_os_release(buf, (size_t)n, out, size);
	}
	out[0] = '\0';
	return (int)n;
}

/* The device of the last "/" mount in mountinfo: the one processes see. */
static int root_device(const char *root, unsigned *maj, unsigned *min, char *src, size_t srcsize)
{
	const size_t size = 4 * POSTURE_READ_MAX;
	char *buf = malloc(size), *line, *save = NULL, *cut;
	ssize_t n;
	int ret = -ENOENT;

	if (!buf)
		return -ENOMEM;
	n = read_small(root, "/proc/self/mountinfo", buf, size);
	if (n < 0) {
		ret = (int)n;
		goto out;
	}
	/* Cut short: a partial last line could read as a mount on "/". */
	if ((size_t)n == size - 1 && (cut = strrchr(buf, '\n')))
		cut[1] = '\0';
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char mp[8], source[256];
		const char *dash;
		unsigned a, b;

		/* id parent major:minor root mountpoint options ... - fstype source superopts */
		if (sscanf(line, "%*u %*u %u:%u %*s %7s", &a, &b, mp) != 3 || strcmp(mp, "/") != 0)
			continue;
		*maj = a;
		*min = b;
		src[0] = '\0';
		dash = strstr(line, " - ");
		if (dash && sscanf(dash, " - %*s %255s", source) == 1)
			snprintf(src, srcsize, "%s", source);
		ret = 0;
	}
out:
	free(buf);
	return ret;
}

/* dir is a block device's sysfs directory (relative to root): dm-crypt, or above one. */
static int dm_crypt_below(const char *root, const char *dir, unsigned depth)
{
	char path[POSTURE_PATH_MAX], uuid[160], full[POSTURE_PATH_MAX];
	struct dirent *de;
	DIR *d;
	int ret = 0;

	if (depth > POSTURE_DM_DEPTH)
		return 0;
	if ((size_t)snprintf(path, sizeof(path), "%s/dm/uuid", dir) >= sizeof(path))
		return 0;
	if (read_small(root, path, uuid, sizeof(uuid)) > 0 && strncmp(uuid, "CRYPT-", 6) == 0)
		return 1;
	/* LVM (or another dm target) on LUKS: look through the devices below. */
	if ((size_t)snprintf(path, sizeof(path), "%s/slaves", dir) >= sizeof(path) ||
	    root_path(root, path, full, sizeof(full)) < 0)
		return 0;
	d = opendir(full);
	if (!d)
		return 0;
	while (!ret && (de = readdir(d))) {
		char sub[POSTURE_PATH_MAX];

		if (de->d_name[0] == '.')
			continue;
		if ((size_t)snprintf(sub, sizeof(sub), "%s/%s", path, de->d_name) >= sizeof(sub))
			continue;
		ret = dm_crypt_below(root, sub, depth + 1);
	}
	closedir(d);
	return ret;
}

int posture_disk_encrypted(const char *root)
{
	char src[256], dir[64], full[POSTURE_PATH_MAX];
	unsigned maj = 0, min = 0;
	struct stat st;
	int ret;

	ret = root_device(root, &maj, &min, src, sizeof(src));
	if (ret < 0)
		return ret;
	snprintf(dir, sizeof(dir), "/sys/dev/block/%u:%u", maj, min);
	/* btrfs and others show an anonymous device (0:N): take the mount source's. */
	if ((root_path(root, dir, full, sizeof(full)) < 0 || stat(full, &st) < 0) &&
	    strncmp(src, "/dev/", 5) == 0 && root_path(root, src, full, sizeof(full)) == 0 &&
	    stat(full, &st) == 0 && S_ISBLK(st.st_mode))
		snprintf(dir, sizeof(dir), "/sys/dev/block/%u:%u", major(st.st_rdev),
		         minor(st.st_rdev));
	return dm_crypt_below(root, dir, 0);
}

/* Marks found[i] for each names[i] running; stops early when all are found. */
static int scan_procs(const char *root, char (*names)[MT_PROCESS_MAX + 1], unsigned n, bool *found)
{
	char full[POSTURE_PATH_MAX];
	unsigned left = n;
	struct dirent *de;
	DIR *d;
	int ret;

	memset(found, 0, n * sizeof(*found));
	if (n == 0)
		return 0;
	if ((ret = root_path(root, "/proc", full, sizeof(full))) < 0)
		return ret;
	d = opendir(full);
	if (!d)
		return -errno;
	while (left && (de = readdir(d))) {
		char path[64], comm[64], exe[POSTURE_PATH_MAX];
		const char *base = NULL;
		ssize_t len;

		if (!isdigit((unsigned char)de->d_name[0]) || strlen(de->d_name) > 20)
			continue;
		snprintf(path, sizeof(path), "/proc/%s/comm", de->d_name);
		if (read_small(root, path, comm, sizeof(comm)) < 0)
			continue; /* gone since readdir */
		comm[strcspn(comm, "\n")] = '\0';
		snprintf(path, sizeof(path), "/proc/%s/exe", de->d_name);
		/* exe needs ptrace access: without it (another user's process) comm alone. */
		if (root_path(root, path, full, sizeof(full)) == 0 &&
		    (len = readlink(full, exe, sizeof(exe) - 1)) > 0) {
			exe[len] = '\0';
			if (len > 10 && strcmp(exe + len - 10, " (deleted)") == 0)
				exe[len - 10] = '\0';
			base = strrchr(exe, '/');
			base = base ? base + 1 : exe;
		}
		for (unsigned i = 0; i < n; i++) {
			if (found[i])
				continue;
			if (strcmp(names[i], comm) == 0 || (base && strcmp(names[i], base) == 0)) {
				found[i] = true;
				left--;
			}
		}
	}
	closedir(d);
	return 0;
}

int posture_process_running(const char *root, const char *name)
{
	char names[1][MT_PROCESS_MAX + 1];
	bool found;
	int ret;

	if (strlen(name) > MT_PROCESS_MAX)
		return -EINVAL;
	snprintf(names[0], sizeof(names[0]), "%s", name);
	ret = scan_procs(root, names, 1, &found);
	return ret < 0 ? ret : found;
}

static bool same_stat(const struct posture_file *f, const struct stat *st)
{
	return f->dev == st->st_dev && f->ino == st->st_ino && f->size == st->st_size &&
	       f->mtime.tv_sec == st->st_mtim.tv_sec && f->mtime.tv_nsec == st->st_mtim.tv_nsec &&
	       f->ctime.tv_sec == st->st_ctim.tv_sec && f->ctime.tv_nsec == st->st_ctim.tv_nsec;
}

static void keep_stat(struct posture_file *f, const struct stat *st)
{
	f->dev = st->st_dev;
	f->ino = st->st_ino;
	f->size = st->st_size;
	f->mtime = st->st_mtim;
	f->ctime = st->st_ctim;
}

/* SHA-256 of an open regular file's first max bytes; -EFBIG when it holds more. */
static int hash_fd(int fd, uint64_t max, uint8_t out[MT_SHA256_LEN])
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	uint8_t *buf = malloc(64 * 1024);
	uint64_t total = 0;
	ssize_t n;
	int ret = -ENOMEM;

	if (!ctx || !buf || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL))
		goto out;
	for (;;) {
		n = read(fd, buf, 64 * 1024);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			ret = -errno;
			goto out;
		}
		if (n == 0)
			break;
		total += (uint64_t)n;
		if (total > max) {
			ret = -EFBIG;
			goto out;
		}
		if (!EVP_DigestUpdate(ctx, buf, (size_t)n))
			goto out;
	}
	ret = EVP_DigestFinal_ex(ctx, out, NULL) ? 0 : -ENOMEM;
out:
	free(buf);
	EVP_MD_CTX_free(ctx);
	return ret;
}

/* How many ms a is before b (negative: after). */
static long long ts_ms_before(const struct timespec *a, const struct timespec *b)
{
	return ((long long)b->tv_sec - a->tv_sec) * 1000 + (b->tv_nsec - a->tv_nsec) / 1000000;
}

/* Looks at one queried file: stat, and a hash only when stat changed. */
static void file_check(struct posture *p, struct posture_file *f)
{
	const char *root = p->root;
	char full[POSTURE_PATH_MAX];
	struct stat st, st2;
	struct timespec now;
	int fd, ret;

	if (root_path(root, f->path, full, sizeof(full)) < 0 || stat(full, &st) < 0 ||
	    !S_ISREG(st.st_mode)) {
		f->have = false;
		f->present = false;
		return;
	}
	if (f->have && same_stat(f, &st))
		return;
	/* From here a failure is logged once, until stat changes again. */
	keep_stat(f, &st);
	f->have = true;
	f->present = false;
	if ((uint64_t)st.st_size > POSTURE_HASH_MAX) {
		log_warnx(
		    "posture: %s is %lld bytes, over the %llu the agent hashes: reported absent",
		    f->path, (long long)st.st_size, (unsigned long long)POSTURE_HASH_MAX);
		return;
	}
	/* O_NONBLOCK: a FIFO swapped in after stat must not hang the agent's loop. */
	fd = open(full, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		log_warn("posture: %s: reported absent", f->path);
		return;
	}
	if (fstat(fd, &st2) < 0 || !S_ISREG(st2.st_mode) || !same_stat(f, &st2)) {
		f->have = false; /* replaced since stat: look again next time */
		close(fd);
		return;
	}
	clock_gettime(CLOCK_REALTIME, &now);
	p->hashes++;
	ret = hash_fd(fd, POSTURE_HASH_MAX, f->sha256);
	close(fd);
	if (ret < 0) {
		errno = -ret;
		log_warn("posture: hashing %s: reported absent", f->path);
		return;
	}
	f->present = true;
	/* Changed while read, or changed so shortly before the read that a second change in
	 * the same timestamp tick would not show in stat: hash again next time. */
	if (stat(full, &st) < 0 || !same_stat(f, &st) || ts_ms_before(&st.st_ctim, &now) < 50)
		f->have = false;
}

int posture_new(const char *root, struct posture **out)
{
	struct posture *p;

	if (root && strlen(root) >= POSTURE_PATH_MAX / 2)
		return -EINVAL;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	snprintf(p->root, sizeof(p->root), "%s", root ? root : "");
	/* "/" as a prefix would make "//proc": the same place, but keep paths clean. */
	if (strcmp(p->root, "/") == 0)
		p->root[0] = '\0';
	*out = p;
	return 0;
}

void posture_free(struct posture *p)
{
	free(p);
}

int posture_set_query(struct posture *p, const struct mt_posture_query *q)
{
	struct posture_file old[MT_POSTURE_FILES_MAX];
	unsigned nold = p->nfiles, nf = 0, np = 0;
	struct mt_iter it;
	struct mt_bytes t;
	uint16_t type;

	memcpy(old, p->files, sizeof(old));
	wire_posture_iter(&q->attrs, &it);
	while (wire_posture_next(&it, &type, &t, NULL)) {
		if (type == MT_A_FILE) {
			struct posture_file *f;

			if (nf >= MT_POSTURE_FILES_MAX || t.len > MT_PATH_MAX)
				return -EINVAL;
			f = &p->files[nf++];
			memset(f, 0, sizeof(*f));
			memcpy(f->path, t.p, t.len);
			for (unsigned i = 0; i < nold; i++)
				if (strcmp(old[i].path, f->path) == 0)
					*f = old[i];
		} else if (type == MT_A_PROCESS) {
			if (np >= MT_POSTURE_PROCS_MAX || t.len > MT_PROCESS_MAX)
				return -EINVAL;
			memcpy(p->procs[np], t.p, t.len);
			p->procs[np++][t.len] = '\0';
		}
	}
	p->nfiles = nf;
	p->nprocs = np;
	p->version = q->version;
	return 0;
}

void posture_collect(struct posture *p, struct posture_facts *f)
{
	bool found[MT_POSTURE_PROCS_MAX];
	int ret;

	memset(f, 0, sizeof(*f));
	f->version = p->version;
	f->files_asked = p->nfiles;
	f->procs_asked = p->nprocs;
	if (posture_kernel(p->root, f->kernel, sizeof(f->kernel)) < 0)
		f->kernel[0] = '\0';
	if (posture_os(p->root, f->os, sizeof(f->os)) < 0)
		f->os[0] = '\0';
	ret = posture_disk_encrypted(p->root);
	f->disk_encrypted = ret > 0;
	for (unsigned i = 0; i < p->nfiles; i++) {
		file_check(p, &p->files[i]);
		if (!p->files[i].present)
			continue;
		memcpy(f->files[f->nfiles].path, p->files[i].path, sizeof(f->files[0].path));
		memcpy(f->files[f->nfiles++].sha256, p->files[i].sha256, MT_SHA256_LEN);
	}
	if (scan_procs(p->root, p->procs, p->nprocs, found) < 0)
		return;
	for (unsigned i = 0; i < p->nprocs; i++)
		if (found[i])
			memcpy(f->procs[f->nprocs++], p->procs[i], sizeof(f->procs[0]));
}

bool posture_facts_equal(const struct posture_facts *a, const struct posture_facts *b)
{
	if (a->version != b->version || a->disk_encrypted != b->disk_encrypted ||
	    a->nfiles != b->nfiles || a->nprocs != b->nprocs || strcmp(a->kernel, b->kernel) ||
	    strcmp(a->os, b->os))
		return false;
	for (unsigned i = 0; i < a->nfiles; i++)
		if (strcmp(a->files[i].path, b->files[i].path) ||
		    memcmp(a->files[i].sha256, b->files[i].sha256, MT_SHA256_LEN))
			return false;
	for (unsigned i = 0; i < a->nprocs; i++)
		if (strcmp(a->procs[i], b->procs[i]))
			return false;
	return true;
}

static struct mt_bytes view(const char *s)
{
	return (struct mt_bytes){(const uint8_t *)s, (uint16_t)strlen(s)};
}

void posture_facts_msg(const struct posture_facts *f, struct posture_msg *out)
{
	memset(out, 0, sizeof(*out));
	out->m.hdr.type = MT_POSTURE;
	for (unsigned i = 0; i < f->nfiles; i++) {
		out->files[i].path = view(f->files[i].path);
		memcpy(out->files[i].sha256, f->files[i].sha256, MT_SHA256_LEN);
	}
	for (unsigned i = 0; i < f->nprocs; i++)
		out->procs[i] = view(f->procs[i]);
	out->m.u.posture = (struct mt_posture){
	    .version = f->version,
	    .kernel = view(f->kernel),
	    .os = view(f->os),
	    .disk_encrypted = f->disk_encrypted,
	    .files = out->files,
	    .nfiles = (uint16_t)f->nfiles,
	    .procs = out->procs,
	    .nprocs = (uint16_t)f->nprocs,
	};
}

unsigned long posture_hashes(const struct posture *p)
{
	return p->hashes;
}

void posture_facts_summary(const struct posture_facts *f, char *buf, size_t size)
{
	snprintf(buf, size, "kernel=\"%s\" os=\"%s\" disk_encrypted=%u files=%u/%u processes=%u/%u",
	         f->kernel, f->os, f->disk_encrypted, f->nfiles, f->files_asked, f->nprocs,
	         f->procs_asked);
}
