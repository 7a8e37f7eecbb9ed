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
 * "migros-criu criu-dump" with the file as fd 3 and the images directory as
 * fd 4; migros stops the context's QPs and writes rdma-<id>.img.
 *
 * Restore: RESTORE_EXT_FILE gives each of our files a placeholder, a memfd
 * named after the file's id, which CRIU puts at the file's fd number;
 * UPDATE_VMA_MAP maps the ring VMAs from a placeholder memfd. Neither can
 * do more: memory is not yet at its final addresses. RESUME_DEVICES_LATE
 * runs in the CRIU master once it is, with the tasks stopped under its
 * ptrace: the plugin starts "migros-criu criu-restore" for each task that holds
 * placeholders and runs, in the task, the system calls migros asks for
 * (open, ioctl, mmap, dup3, ...), so the task itself owns what is created.
 * If migros fails, the task is killed: CRIU ignores this hook's result.
 *
 * Every hook returns -ENOTSUP for what is not ours, so that other plugins
 * and CRIU itself handle it.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/user.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <signal.h>
#include <stdint.h>
#include <unistd.h>

#include <criu/criu-plugin.h>

/*
 * CRIU's log file. criu exports it (declared in criu-log.h, which needs
 * CRIU's internal log.h). Our messages and migros' errors go there: when
 * runc runs CRIU, its stderr is not kept.
 */
extern int log_get_fd(void);

#define plugin_err(fmt, ...) \
	dprintf(log_get_fd(), "Error (migros plugin): " fmt, ##__VA_ARGS__)

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

/*
 * Start "migros CMD --fd 3 --images-fd 4 --ID_FLAG ID" with fd as 3 and the
 * images directory as 4.
 */
static pid_t start_migros(const char *cmd, int fd, const char *id_flag, int id)
{
	const char *bin = getenv("MIGROS_BIN");
	char idstr[16];
	pid_t pid;

	if (!bin)
		bin = "migros-criu";
	snprintf(idstr, sizeof(idstr), "%d", id);
	pid = fork();
	if (pid < 0)
		return -errno;
	if (!pid) {
		/* Move all out of the way first: any may be 2, 3 or 4. */
		int f = fcntl(fd, F_DUPFD, 10);
		int dir = fcntl(criu_get_image_dir(), F_DUPFD, 10);
		int log = fcntl(log_get_fd(), F_DUPFD, 10);

		if (f < 0 || dir < 0 || dup2(f, 3) < 0 || dup2(dir, 4) < 0)
			_exit(126);
		if (log >= 0)
			dup2(log, 2);
		execlp(bin, "migros-criu", cmd, "--fd", "3", "--images-fd", "4",
		       id_flag, idstr, (char *)NULL);
		dprintf(2, "migros plugin: exec %s: %s\n", bin, strerror(errno));
		_exit(127);
	}
	return pid;
}

static int wait_migros(pid_t pid, const char *cmd, int id)
{
	int status;

	if (waitpid(pid, &status, 0) < 0)
		return -errno;
	if (!WIFEXITED(status) || WEXITSTATUS(status)) {
		plugin_err("migros %s for %d failed\n", cmd, id);
		return -EIO;
	}
	return 0;
}

static int run_migros(const char *cmd, int fd, int id)
{
	pid_t pid = start_migros(cmd, fd, "--id", id);

	return pid < 0 ? pid : wait_migros(pid, cmd, id);
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

static bool image_exists(const char *fmt, int id)
{
	char name[64];

	snprintf(name, sizeof(name), fmt, id);
	return !faccessat(criu_get_image_dir(), name, F_OK, 0);
}

/* Runs in the restored task; migros-criu criu-restore replaces it later. */
static int migros_restore_file(int id)
{
	char name[64];

	if (image_exists("rdma-%d.img", id))
		snprintf(name, sizeof(name), "migros-uverbs-%d", id);
	else if (image_exists("rdma-event-%d.img", id))
		snprintf(name, sizeof(name), "migros-event-%d", id);
	else
		return -ENOTSUP;
	return memfd_create(name, MFD_CLOEXEC);
}
CR_PLUGIN_REGISTER_HOOK(CR_PLUGIN_HOOK__RESTORE_EXT_FILE, migros_restore_file)

/*
 * Ring VMAs are mapped from one memfd per task (plugin state is per task:
 * this runs in the restored task), which migros closes when it has mapped
 * the real rings over them.
 */
static int vma_fd = -1;

static int migros_update_vma(const char *path, const uint64_t addr,
			     const uint64_t old_pgoff, uint64_t *new_pgoff,
			     int *plugin_fd)
{
	(void)addr;
	(void)old_pgoff;
	if (strncmp(path, "/dev/infiniband/uverbs", 22))
		return -ENOTSUP;
	if (vma_fd < 0) {
		vma_fd = memfd_create("migros-vma", MFD_CLOEXEC);
		/* Sparse: large enough for any ring, costs nothing. */
		if (vma_fd < 0 || ftruncate(vma_fd, 1L << 32))
			return -errno;
	}
	*new_pgoff = 0;
	*plugin_fd = vma_fd;
	return 1;
}
CR_PLUGIN_REGISTER_HOOK(CR_PLUGIN_HOOK__UPDATE_VMA_MAP, migros_update_vma)

/*
 * A system call migros asks for (executor ABI, rdma/criu/task.go), in
 * thread tid of the task, 0 for its main thread; the reply is its result.
 * nr EXEC_BATCH asks for a table of calls instead: args[0] is its address
 * in the task, args[1] the number of entries (struct batch_entry); the
 * reply is how many ran.
 */
struct exec_req {
	uint64_t nr;
	uint64_t args[6];
	uint64_t tid;
};

#define EXEC_BATCH	UINT64_MAX

/*
 * The code the task runs: at 0, "syscall; int3" for one call; at
 * stub_batch, a loop over a table of { nr, args[6], result } (r12 the
 * table, r13 the count) that stops at the end of the table or after the
 * first call that fails (a result from -4095 to -1), then traps. One ptrace
 * round trip thus runs any number of calls: under emulation it costs more
 * than the calls themselves.
 */
extern const unsigned char migros_stub[], migros_stub_batch[], migros_stub_end[];
asm(".pushsection .rodata\n"
    "migros_stub:\n"
    "	syscall\n"
    "	int3\n"
    "migros_stub_batch:\n"
    "	test %r13, %r13\n"
    "	jz 2f\n"
    "	mov (%r12), %rax\n"
    "	mov 8(%r12), %rdi\n"
    "	mov 16(%r12), %rsi\n"
    "	mov 24(%r12), %rdx\n"
    "	mov 32(%r12), %r10\n"
    "	mov 40(%r12), %r8\n"
    "	mov 48(%r12), %r9\n"
    "	syscall\n"
    "	mov %rax, 56(%r12)\n"
    "	add $64, %r12\n"
    "	dec %r13\n"
    "	cmp $-4095, %rax\n"
    "	jae 2f\n"
    "	jmp migros_stub_batch\n"
    "2:	int3\n"
    "migros_stub_end:\n"
    ".popsection\n");

#define STUB_WORDS	16	/* room for the stub, in 8-byte words */

/* A thread the executor has run calls in, and the registers it had. */
struct exec_thread {
	pid_t tid;
	struct user_regs_struct saved;
};

/*
 * The task is in a ptrace stop of ours. Run one system call in it: put
 * "syscall; int3" at gadget, point the registers at it, let it run to the
 * int3. Its code and registers are put back by restore_task().
 */
static int64_t task_syscall(pid_t pid, const struct user_regs_struct *saved,
			    uint64_t gadget, const struct exec_req *req)
{
	struct user_regs_struct r = *saved;
	bool batch = req->nr == EXEC_BATCH;
	int status;

	if (batch) {
		r.r12 = req->args[0];
		r.r13 = req->args[1];
		r.rip = gadget + (migros_stub_batch - migros_stub);
	} else {
		r.rax = req->nr;
		r.rdi = req->args[0];
		r.rsi = req->args[1];
		r.rdx = req->args[2];
		r.r10 = req->args[3];
		r.r8 = req->args[4];
		r.r9 = req->args[5];
		r.rip = gadget;
	}
	r.orig_rax = -1;	/* no syscall restart on the way out */
	if (ptrace(PTRACE_SETREGS, pid, NULL, &r) ||
	    ptrace(PTRACE_CONT, pid, NULL, NULL))
		return -errno;
	if (waitpid(pid, &status, __WALL) != pid)
		return -errno;
	if (!WIFSTOPPED(status) || WSTOPSIG(status) != SIGTRAP) {
		plugin_err("task %d: status %#x in a system call\n", pid, status);
		return -ECHILD;
	}
	if (ptrace(PTRACE_GETREGS, pid, NULL, &r))
		return -errno;
	return batch ? (int64_t)(req->args[1] - r.r13) : (int64_t)r.rax;
}

/* The start of an executable mapping of the task (its rip may not be). */
static uint64_t find_gadget(pid_t pid)
{
	char path[64], line[512], perms[8];
	uint64_t start = 0, end;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/maps", pid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx %7s", &start, &end, perms) == 3 &&
		    perms[2] == 'x' && !strstr(line, "[vsyscall]"))
			break;
		start = 0;
	}
	fclose(f);
	return start;
}

static bool has_placeholders(pid_t pid)
{
	char path[300], target[128];
	struct dirent *de;
	bool found = false;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%d/fd", pid);
	d = opendir(path);
	if (!d)
		return false;
	while (!found && (de = readdir(d))) {
		ssize_t n;

		snprintf(path, sizeof(path), "/proc/%d/fd/%s", pid, de->d_name);
		n = readlink(path, target, sizeof(target) - 1);
		if (n < 0)
			continue;
		target[n] = 0;
		found = !strncmp(target, "/memfd:migros-uverbs-", 21);
	}
	closedir(d);
	return found;
}

/* The thread tid of task, its registers saved on first use; NULL if none. */
static struct exec_thread *exec_thread(pid_t task, pid_t tid,
				       struct exec_thread **ts, int *n)
{
	struct exec_thread *t;
	char path[64];
	int i;

	for (i = 0; i < *n; i++)
		if ((*ts)[i].tid == tid)
			return &(*ts)[i];
	snprintf(path, sizeof(path), "/proc/%d/task/%d", task, tid);
	if (access(path, F_OK))
		return NULL;
	t = realloc(*ts, (*n + 1) * sizeof(**ts));
	if (!t)
		return NULL;
	*ts = t;
	t = &t[*n];
	t->tid = tid;
	if (ptrace(PTRACE_GETREGS, tid, NULL, &t->saved))
		return NULL;
	(*n)++;
	return t;
}

/* Put back the first n words of the task's code that the stub replaced. */
static int take_stub(pid_t task, uint64_t gadget, const uint64_t *orig, int n)
{
	int i, err = 0;

	for (i = 0; i < n; i++)
		if (ptrace(PTRACE_POKETEXT, task, gadget + 8 * i, orig[i]) && !err)
			err = -errno;
	return err;
}

/* Put the stub at gadget, keeping the task's code there in orig. */
static int put_stub(pid_t task, uint64_t gadget, uint64_t *orig)
{
	uint64_t code[STUB_WORDS] = { 0 };
	int i, err = 0;

	memcpy(code, migros_stub, migros_stub_end - migros_stub);
	for (i = 0; i < STUB_WORDS; i++) {
		errno = 0;
		orig[i] = ptrace(PTRACE_PEEKTEXT, task, gadget + 8 * i, NULL);
		if (errno || ptrace(PTRACE_POKETEXT, task, gadget + 8 * i,
				    code[i])) {
			err = errno ? -errno : -EIO;
			take_stub(task, gadget, orig, i);
			break;
		}
	}
	return err;
}

static int serve(pid_t task, int sock)
{
	struct exec_thread *ts = NULL, *t;
	uint64_t gadget, orig[STUB_WORDS];
	struct exec_req req;
	int64_t ret;
	int err = 0, n = 0, i;

	if (migros_stub_end - migros_stub > (long)sizeof(orig))
		return -E2BIG;
	gadget = find_gadget(task);
	if (!gadget)
		return -ENOEXEC;
	if (!exec_thread(task, task, &ts, &n)) {
		free(ts);
		return -ESRCH;
	}
	err = put_stub(task, gadget, orig);
	if (err) {
		free(ts);
		return err;
	}
	/* The threads share the task's memory: one gadget serves them all. */
	while (recv(sock, &req, sizeof(req), 0) == sizeof(req)) {
		t = exec_thread(task, req.tid ? (pid_t)req.tid : task, &ts, &n);
		ret = t ? task_syscall(t->tid, &t->saved, gadget, &req) : -ESRCH;
		if (send(sock, &ret, sizeof(ret), 0) != sizeof(ret)) {
			err = -EPIPE;
			break;
		}
	}
	i = take_stub(task, gadget, orig, STUB_WORDS);
	if (i && !err)
		err = i;
	for (i = 0; i < n; i++)
		if (ptrace(PTRACE_SETREGS, ts[i].tid, NULL, &ts[i].saved))
			err = err ? err : -errno;
	free(ts);
	return err;
}

/*
 * Runs in the CRIU master, the tasks' tracer, after the restorer has put
 * memory at its final addresses and before the tasks run.
 */
static int migros_resume_late(int pid)
{
	int sv[2], err, werr;
	pid_t child;

	if (!has_placeholders(pid))
		return -ENOTSUP;
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv))
		return -errno;
	child = start_migros("criu-restore", sv[1], "--pid", pid);
	close(sv[1]);
	if (child < 0) {
		close(sv[0]);
		return child;
	}
	err = serve(pid, sv[0]);
	close(sv[0]);
	werr = wait_migros(child, "criu-restore", pid);
	if (err || werr) {
		plugin_err("RDMA restore of %d failed (%d); killing it\n",
			   pid, err ? err : werr);
		kill(pid, SIGKILL);
		return err ? err : werr;
	}
	return 0;
}
CR_PLUGIN_REGISTER_HOOK(CR_PLUGIN_HOOK__RESUME_DEVICES_LATE, migros_resume_late)

CR_PLUGIN_REGISTER_DUMMY("migros")
