// SPDX-License-Identifier: GPL-2.0
/*
 * MigrOS CRIU plugin.
 *
 * CRIU cannot checkpoint a process that has /dev/infiniband/uverbs* open or
 * mapped. This plugin lets it: it claims the uverbs files, the
 * [infinibandevent] files (async events, completion channels) and the
 * uverbs ring mappings, and hands the RDMA work to the migros command,
 * which does it in Go.
 *
 * Dump: CRIU calls DUMP_EXT_FILE for each uverbs file while it has the
 * process frozen and before it dumps memory. The plugin runs
 * "migros criu-dump" with the file as fd 3 and the images directory as
 * fd 4; migros stops the context's QPs and writes rdma-<id>.img.
 *
 * Every hook returns -ENOTSUP for what is not ours, so that other plugins
 * and CRIU itself handle it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criu/criu-plugin.h>

#define UVERBS_MAJOR	231
#define UVERBS_MINOR	192

static bool is_uverbs(const struct stat *st)
{
	return S_ISCHR(st->st_mode) && major(st->st_rdev) == UVERBS_MAJOR &&
	       minor(st->st_rdev) >= UVERBS_MINOR;
}

static bool is_ib_event(int fd)
{
	char path[64], target[64];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, target, sizeof(target) - 1);
	if (n < 0)
		return false;
	target[n] = 0;
	return !strcmp(target, "anon_inode:[infinibandevent]");
}

/* Run "migros ARGS..." with fd as 3 and the images directory as 4. */
static int run_migros(const char *cmd, int fd, int id)
{
	const char *bin = getenv("MIGROS_BIN");
	char idstr[16];
	int status;
	pid_t pid;

	if (!bin)
		bin = "migros";
	snprintf(idstr, sizeof(idstr), "%d", id);
	pid = fork();
	if (pid < 0)
		return -errno;
	if (!pid) {
		/* Move both out of the way first: either may be 3 or 4. */
		int f = fcntl(fd, F_DUPFD, 10);
		int dir = fcntl(criu_get_image_dir(), F_DUPFD, 10);

		if (f < 0 || dir < 0 || dup2(f, 3) < 0 || dup2(dir, 4) < 0)
			_exit(126);
		execlp(bin, "migros", cmd, "--fd", "3", "--images-fd", "4",
		       "--id", idstr, (char *)NULL);
		fprintf(stderr, "migros plugin: exec %s: %s\n", bin,
			strerror(errno));
		_exit(127);
	}
	if (waitpid(pid, &status, 0) < 0)
		return -errno;
	if (!WIFEXITED(status) || WEXITSTATUS(status)) {
		fprintf(stderr, "migros plugin: migros %s for file %d failed\n",
			cmd, id);
		return -EIO;
	}
	return 0;
}

/* A marker in the images says an [infinibandevent] file was ours. */
static int mark_event_file(int id)
{
	char name[64];
	int fd;

	snprintf(name, sizeof(name), "rdma-event-%d.img", id);
	fd = openat(criu_get_image_dir(), name, O_WRONLY | O_CREAT | O_TRUNC,
		    0600);
	if (fd < 0)
		return -errno;
	close(fd);
	return 0;
}

static int migros_dump_file(int fd, int id)
{
	struct stat st;

	if (fstat(fd, &st))
		return -errno;
	if (is_uverbs(&st))
		return run_migros("criu-dump", fd, id);
	if (is_ib_event(fd))
		return mark_event_file(id);
	return -ENOTSUP;
}
CR_PLUGIN_REGISTER_HOOK(CR_PLUGIN_HOOK__DUMP_EXT_FILE, migros_dump_file)

/* The ring mappings' contents are in the RDMA image, not CRIU's. */
static int migros_handle_vma(int fd, const struct stat *st)
{
	(void)fd;
	return is_uverbs(st) ? 0 : -ENOTSUP;
}
CR_PLUGIN_REGISTER_HOOK(CR_PLUGIN_HOOK__HANDLE_DEVICE_VMA, migros_handle_vma)

CR_PLUGIN_REGISTER_DUMMY("migros")
