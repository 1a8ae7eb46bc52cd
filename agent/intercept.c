/* The agent's loader for bpf/intercept.bpf.c: one pinned bpf_link per hook under
 * <bpffs>/mtun/<instance>/, taken over after a crash, removed on a clean stop. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <mntent.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <linux/magic.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "log.h"
#include "agent/intercept.h"
#include "bpf/intercept.h"
#include "bpf/intercept.skel.h"

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

#define INTERCEPT_MAX_HOOKS 16
#define PROG_PREFIX         "intercept_"
#define INSTANCE_MAX        64

struct intercept {
	struct intercept_bpf *skel;
	int cgroup_fd;
	uint64_t netns_cookie;
	char pin_root[PATH_MAX];
	char pin_dir[PATH_MAX];
	struct bpf_link *links[INTERCEPT_MAX_HOOKS];
	unsigned nlinks;
	unsigned recovered;
};

__attribute__((format(printf, 2, 0))) static int libbpf_log(enum libbpf_print_level level,
                                                            const char *fmt, va_list ap)
{
	char line[1024];
	size_t n;

	if (level == LIBBPF_DEBUG && log_get_level() < LOG_LVL_DEBUG)
		return 0;
	vsnprintf(line, sizeof(line), fmt, ap);
	n = strlen(line);
	while (n > 0 && line[n - 1] == '\n')
		line[--n] = '\0';
	if (level == LIBBPF_WARN)
		log_warnx("%s", line);
	else
		log_debug("%s", line);
	return 0;
}

int intercept_cgroup2_root(char *buf, size_t size)
{
	struct mntent *m;
	FILE *f;
	int err = -ENOENT;

	f = setmntent("/proc/self/mounts", "re");
	if (!f)
		return -errno;
	while ((m = getmntent(f))) {
		if (strcmp(m->mnt_type, "cgroup2") != 0)
			continue;
		if (strlen(m->mnt_dir) >= size) {
			err = -ENAMETOOLONG;
			break;
		}
		strcpy(buf, m->mnt_dir);
		err = 0;
		break;
	}
	endmntent(f);
	return err;
}

int intercept_netns_cookie(uint64_t *cookie)
{
	socklen_t len = sizeof(*cookie);
	int fd, err = 0;

	fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, cookie, &len) < 0)
		err = -errno;
	close(fd);
	return err;
}

static bool instance_valid(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > INSTANCE_MAX || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
		return false;
	return strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

/* A bpffs at root, mounting one if nothing is mounted there. */
static int bpffs_ensure(const char *root)
{
	struct stat st, parent;
	struct statfs sfs;
	char up[PATH_MAX];

	if (statfs(root, &sfs) == 0 && sfs.f_type == BPF_FS_MAGIC)
		return 0;
	if (mkdir(root, 0700) < 0 && errno != EEXIST) {
		log_warn("intercept: mkdir %s", root);
		return -errno;
	}
	if (snprintf(up, sizeof(up), "%s/..", root) >= (int)sizeof(up))
		return -ENAMETOOLONG;
	if (stat(root, &st) < 0 || stat(up, &parent) < 0) {
		log_warn("intercept: stat %s", root);
		return -errno;
	}
	if (st.st_dev != parent.st_dev) {
		log_warnx("intercept: %s is a mount point but not a bpffs", root);
		return -ENOTDIR;
	}
	if (mount("bpf", root, "bpf", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0700") < 0) {
		log_warn("intercept: mount bpffs on %s", root);
		return -errno;
	}
	log_info("intercept: mounted bpffs on %s", root);
	return 0;
}

static int pin_paths(const char *root, const char *instance, char *top, char *dir)
{
	if (!instance_valid(instance)) {
		log_warnx("intercept: bad instance name %s", instance);
		return -EINVAL;
	}
	if (snprintf(top, PATH_MAX, "%s/mtun", root) >= PATH_MAX ||
	    snprintf(dir, PATH_MAX, "%s/mtun/%s", root, instance) >= PATH_MAX)
		return -ENAMETOOLONG;
	return 0;
}

/* Detaches the link pinned at path, whoever else holds it, and removes the pin. */
static int pin_remove(const char *path)
{
	struct bpf_link *link;
	int err = 0;

	link = bpf_link__open(path);
	if (link) {
		/* -EINVAL: already defunct (its cgroup is gone) */
		err = bpf_link__detach(link);
		if (err == -EINVAL)
			err = 0;
		bpf_link__destroy(link);
	}
	if (unlink(path) < 0 && errno != ENOENT) {
		log_warn("intercept: unlink %s", path);
		return -errno;
	}
	return err;
}

/* Removes every pin in dir except those named in keep (NULL: all). */
static int pin_dir_sweep(const char *dir, struct bpf_link *const *keep, unsigned nkeep)
{
	char path[PATH_MAX];
	struct dirent *de;
	int err = 0, r;
	DIR *d;

	d = opendir(dir);
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	while ((de = readdir(d))) {
		bool kept = false;

		if (de->d_name[0] == '.')
			continue;
		if (snprintf(path, sizeof(path), "%s/%s", dir, de->d_name) >= (int)sizeof(path))
			continue;
		for (unsigned i = 0; i < nkeep && !kept; i++) {
			const char *p = bpf_link__pin_path(keep[i]);

			kept = p && strcmp(p, path) == 0;
		}
		if (kept)
			continue;
		r = pin_remove(path);
		if (r < 0 && !err)
			err = r;
		if (nkeep)
			log_info("intercept: removed stale pin %s", path);
	}
	closedir(d);
	return err;
}

static int cgroup_id(int cgroup_fd, uint64_t *id)
{
	struct {
		struct file_handle fh;
		uint64_t id;
	} h = {.fh.handle_bytes = sizeof(uint64_t)};
	int mount_id;

	if (name_to_handle_at(cgroup_fd, "", &h.fh, &mount_id, AT_EMPTY_PATH) < 0)
		return -errno;
	memcpy(id, h.fh.f_handle, sizeof(*id));
	return 0;
}

/*
 * A link pinned at path by a previous run, switched over to prog when it still hooks
 * the same cgroup the same way; NULL when there is none to take over.
 */
static struct bpf_link *link_take_over(const char *path, struct bpf_program *prog, uint64_t cg_id)
{
	struct bpf_link_info info;
	__u32 len = sizeof(info);
	struct bpf_link *link;
	int err;

	if (access(path, F_OK) < 0)
		return NULL;
	link = bpf_link__open(path);
	if (!link)
		goto out;
	memset(&info, 0, sizeof(info));
	err = bpf_obj_get_info_by_fd(bpf_link__fd(link), &info, &len);
	if (err == 0 && info.type == BPF_LINK_TYPE_CGROUP && info.cgroup.cgroup_id == cg_id &&
	    info.cgroup.attach_type == bpf_program__expected_attach_type(prog)) {
		err = bpf_link__update_program(link, prog);
		if (err == 0)
			return link;
		log_warnx("intercept: cannot update %s: %s", path, strerror(-err));
	}
	bpf_link__destroy(link);
out:
	pin_remove(path);
	return NULL;
}

static int attach_all(struct intercept *it)
{
	struct bpf_program *prog;
	char path[PATH_MAX];
	uint64_t cg_id = 0;
	int err;

	err = cgroup_id(it->cgroup_fd, &cg_id);
	if (err < 0) {
		log_warnx("intercept: cgroup id: %s", strerror(-err));
		return err;
	}
	bpf_object__for_each_program(prog, it->skel->obj)
	{
		const char *name = bpf_program__name(prog);
		struct bpf_link *link;

		if (strncmp(name, PROG_PREFIX, strlen(PROG_PREFIX)) == 0)
			name += strlen(PROG_PREFIX);
		if (it->nlinks == INTERCEPT_MAX_HOOKS)
			return -E2BIG;
		if (snprintf(path, sizeof(path), "%s/%s", it->pin_dir, name) >= (int)sizeof(path))
			return -ENAMETOOLONG;
		link = link_take_over(path, prog, cg_id);
		if (link) {
			it->links[it->nlinks++] = link;
			it->recovered++;
			continue;
		}
		link = bpf_program__attach_cgroup(prog, it->cgroup_fd);
		if (!link) {
			err = -errno;
			log_warnx("intercept: attach %s: %s", name, strerror(-err));
			return err;
		}
		it->links[it->nlinks++] = link;
		err = bpf_link__pin(link, path);
		if (err < 0) {
			log_warnx("intercept: pin %s: %s", path, strerror(-err));
			return err;
		}
	}
	return pin_dir_sweep(it->pin_dir, it->links, it->nlinks);
}

static int config_rodata(struct intercept *it, const struct intercept_config *cfg)
{
	struct intercept_bpf__rodata *ro = it->skel->rodata;
	uint32_t mask;

	if (cfg->synth_prefix > 32 || cfg->tcp_port == 0) {
		log_warnx("intercept: bad settings: synthetic prefix /%u, tcp port %u",
		          cfg->synth_prefix, cfg->tcp_port);
		return -EINVAL;
	}
	mask = cfg->synth_prefix ? ~0U << (32 - cfg->synth_prefix) : 0;
	ro->synth_mask = htonl(mask);
	ro->synth_addr = cfg->synth.s_addr & htonl(mask);
	ro->tcp_port = cfg->tcp_port;
	ro->dns_port = cfg->dns_port;
	ro->exempt_mark = cfg->exempt_mark;
	ro->netns_cookie = it->netns_cookie;
	return 0;
}

int intercept_open(const struct intercept_config *cfg, struct intercept **out)
{
	char top[PATH_MAX], cg_root[PATH_MAX];
	const char *cgroup = cfg->cgroup;
	struct intercept *it;
	int err;

	it = calloc(1, sizeof(*it));
	if (!it)
		return -ENOMEM;
	it->cgroup_fd = -1;
	libbpf_set_print(libbpf_log);

	snprintf(it->pin_root, sizeof(it->pin_root), "%s",
	         cfg->pin_root ? cfg->pin_root : INTERCEPT_PIN_ROOT);
	err = pin_paths(it->pin_root, cfg->instance ? cfg->instance : "default", top, it->pin_dir);
	if (err < 0)
		goto fail;
	if (!cgroup) {
		err = intercept_cgroup2_root(cg_root, sizeof(cg_root));
		if (err < 0) {
			log_warnx("intercept: no cgroup v2 mount: %s", strerror(-err));
			goto fail;
		}
		cgroup = cg_root;
	}
	it->cgroup_fd = open(cgroup, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (it->cgroup_fd < 0) {
		err = -errno;
		log_warn("intercept: open cgroup %s", cgroup);
		goto fail;
	}
	it->netns_cookie = cfg->netns_cookie;
	if (!it->netns_cookie) {
		err = intercept_netns_cookie(&it->netns_cookie);
		if (err < 0) {
			log_warnx("intercept: netns cookie: %s", strerror(-err));
			goto fail;
		}
	}

	it->skel = intercept_bpf__open();
	if (!it->skel) {
		err = -errno;
		log_warnx("intercept: open programs: %s", strerror(-err));
		goto fail;
	}
	err = config_rodata(it, cfg);
	if (err < 0)
		goto fail;
	err = intercept_bpf__load(it->skel);
	if (err < 0) {
		log_warnx("intercept: load programs: %s", strerror(-err));
		goto fail;
	}

	err = bpffs_ensure(it->pin_root);
	if (err < 0)
		goto fail;
	for (const char *dir = top; dir; dir = dir == top ? it->pin_dir : NULL) {
		if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
			err = -errno;
			log_warn("intercept: mkdir %s", dir);
			goto fail;
		}
	}
	err = attach_all(it);
	if (err < 0)
		goto fail;
	log_info("intercept: attached %u hooks to %s (%u taken over), pins in %s", it->nlinks,
	         cgroup, it->recovered, it->pin_dir);
	*out = it;
	return 0;

fail:
	/* half a set, or a crashed run's, would redirect into nothing: leave none attached */
	intercept_detach(it);
	intercept_free(it);
	return err;
}

unsigned intercept_recovered(const struct intercept *it)
{
	return it->recovered;
}

static int range_key(struct in_addr addr, unsigned prefix, struct intercept_range_key *key)
{
	if (prefix > 32)
		return -EINVAL;
	memset(key, 0, sizeof(*key));
	key->prefixlen = prefix;
	key->addr = addr.s_addr & htonl(prefix ? ~0U << (32 - prefix) : 0);
	return 0;
}

int intercept_add_range(struct intercept *it, struct in_addr addr, unsigned prefix,
                        uint16_t port_min, uint16_t port_max)
{
	struct intercept_range_key key;
	struct intercept_range val = {.port_min = port_min, .port_max = port_max};
	int err;

	if (port_min > port_max || range_key(addr, prefix, &key) < 0)
		return -EINVAL;
	err = bpf_map__update_elem(it->skel->maps.ranges, &key, sizeof(key), &val, sizeof(val),
	                           BPF_ANY);
	if (err < 0)
		log_warnx("intercept: add range: %s", strerror(-err));
	return err;
}

int intercept_del_range(struct intercept *it, struct in_addr addr, unsigned prefix)
{
	struct intercept_range_key key;

	if (range_key(addr, prefix, &key) < 0)
		return -EINVAL;
	return bpf_map__delete_elem(it->skel->maps.ranges, &key, sizeof(key), 0);
}

static int intercept_orig_lookup(struct intercept *it, int fd, unsigned kind,
                                 struct sockaddr_in *dst)
{
	struct intercept_conn_key key = {.netns_cookie = it->netns_cookie};
	struct intercept_orig orig;
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	int err;

	if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0)
		return -errno;
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

		key.addr = sin->sin_addr.s_addr;
		key.port = sin->sin_port;
	} else if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

		if (!IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr))
			return -ENOENT;
		memcpy(&key.addr, &sin6->sin6_addr.s6_addr[12], sizeof(key.addr));
		key.port = sin6->sin6_port;
	} else {
		return -EAFNOSUPPORT;
	}
	err = bpf_map__lookup_and_delete_elem(it->skel->maps.conns, &key, sizeof(key), &orig,
	                                      sizeof(orig), 0);
	if (err < 0)
		return err;
	if (orig.kind != kind)
		return -ENOENT;
	memset(dst, 0, sizeof(*dst));
	dst->sin_family = AF_INET;
	dst->sin_addr.s_addr = orig.addr;
	dst->sin_port = orig.port;
	return 0;
}

int intercept_orig_dst(struct intercept *it, int fd, struct sockaddr_in *dst)
{
	return intercept_orig_lookup(it, fd, INTERCEPT_KIND_TCP, dst);
}

int intercept_dns_tcp_orig(struct intercept *it, int fd, struct sockaddr_in *resolver)
{
	return intercept_orig_lookup(it, fd, INTERCEPT_KIND_DNS_TCP, resolver);
}

int intercept_dns_orig(struct intercept *it, const struct sockaddr_in *client,
                       struct sockaddr_in *resolver)
{
	struct intercept_conn_key key = {.netns_cookie = it->netns_cookie};
	struct intercept_orig orig;
	int err;

	if (client->sin_family != AF_INET)
		return -EAFNOSUPPORT;
	key.addr = client->sin_addr.s_addr;
	key.port = client->sin_port;
	err = bpf_map__lookup_elem(it->skel->maps.dns_clients, &key, sizeof(key), &orig,
	                           sizeof(orig), 0);
	if (err < 0)
		return err;
	if (orig.kind != INTERCEPT_KIND_DNS)
		return -ENOENT;
	memset(resolver, 0, sizeof(*resolver));
	resolver->sin_family = AF_INET;
	resolver->sin_addr.s_addr = orig.addr;
	resolver->sin_port = orig.port;
	return 0;
}

int intercept_detach(struct intercept *it)
{
	char top[PATH_MAX];
	int err = 0, r;

	if (!it)
		return 0;
	for (unsigned i = 0; i < it->nlinks; i++) {
		bpf_link__unpin(it->links[i]);
		r = bpf_link__detach(it->links[i]);
		if (r < 0 && r != -EINVAL && !err)
			err = r;
	}
	if (!it->pin_dir[0])
		return err;
	r = pin_dir_sweep(it->pin_dir, NULL, 0);
	if (r < 0 && !err)
		err = r;
	if (rmdir(it->pin_dir) < 0 && errno != ENOENT && !err)
		err = -errno;
	/* others' instances may still be there */
	if (snprintf(top, sizeof(top), "%s/mtun", it->pin_root) < (int)sizeof(top))
		rmdir(top);
	if (err < 0)
		log_warnx("intercept: detach: %s", strerror(-err));
	return err;
}

void intercept_free(struct intercept *it)
{
	if (!it)
		return;
	for (unsigned i = 0; i < it->nlinks; i++)
		bpf_link__destroy(it->links[i]);
	intercept_bpf__destroy(it->skel);
	if (it->cgroup_fd >= 0)
		close(it->cgroup_fd);
	free(it);
}

int intercept_purge(const char *pin_root, const char *instance)
{
	char top[PATH_MAX], dir[PATH_MAX];
	int err;

	err = pin_paths(pin_root ? pin_root : INTERCEPT_PIN_ROOT, instance, top, dir);
	if (err < 0)
		return err;
	err = pin_dir_sweep(dir, NULL, 0);
	if (rmdir(dir) < 0 && errno != ENOENT && !err)
		err = -errno;
	rmdir(top);
	return err;
}
