// SPDX-License-Identifier: Apache-2.0
/* rdmacheck: helpers both modes share. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "rdmacheck.h"

void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("rdmacheck: ", stderr);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

uint64_t fnv1a(const unsigned char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	while (n--) {
		h ^= *p++;
		h *= 0x100000001b3ULL;
	}
	return h;
}

/* The payload of message seq: a xorshift stream seeded by seq. */
void fill(unsigned char *p, size_t n, uint64_t seq)
{
	uint64_t x = seq * 0x9e3779b97f4a7c15ULL + 1;
	size_t i;

	for (i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = x;
	}
}

int tcp_connect(const char *host, const char *port)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res, *r;
	int fd = -1, err, tries;

	err = getaddrinfo(host, port, &hints, &res);
	if (err)
		die("%s: %s", host, gai_strerror(err));
	/* The server may not be listening yet. */
	for (tries = 0; tries < 100 && fd < 0; tries++) {
		for (r = res; r; r = r->ai_next) {
			fd = socket(r->ai_family, r->ai_socktype, 0);
			if (fd >= 0 && !connect(fd, r->ai_addr, r->ai_addrlen))
				break;
			if (fd >= 0)
				close(fd);
			fd = -1;
		}
		if (fd < 0)
			usleep(100000);
	}
	freeaddrinfo(res);
	if (fd < 0)
		die("cannot connect to %s:%s", host, port);
	return fd;
}

int tcp_accept(const char *port)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE,
				  .ai_family = AF_INET };
	struct addrinfo *res;
	int lfd, fd, one = 1, err;

	err = getaddrinfo(NULL, port, &hints, &res);
	if (err)
		die("port %s: %s", port, gai_strerror(err));
	lfd = socket(res->ai_family, res->ai_socktype, 0);
	if (lfd < 0)
		die("socket: %s", strerror(errno));
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, res->ai_addr, res->ai_addrlen) || listen(lfd, 1))
		die("listen on port %s: %s", port, strerror(errno));
	freeaddrinfo(res);
	fd = accept(lfd, NULL, NULL);
	if (fd < 0)
		die("accept: %s", strerror(errno));
	close(lfd);
	return fd;
}

void send_line(int fd, const char *fmt, ...)
{
	char line[128];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (write(fd, line, n) != n)
		die("tcp write: %s", strerror(errno));
}

void recv_line(int fd, char *line, size_t len)
{
	size_t n = 0;

	while (n + 1 < len) {
		ssize_t r = read(fd, line + n, 1);

		if (r <= 0)
			die("the other side closed the connection");
		if (line[n] == '\n')
			break;
		n++;
	}
	line[n] = 0;
}

struct ibv_context *open_dev(const char *name)
{
	struct ibv_device **list = ibv_get_device_list(NULL);
	struct ibv_context *ctx = NULL;
	int i;

	if (!list || !list[0])
		die("no RDMA device");
	for (i = 0; list[i]; i++)
		if (!name || !strcmp(ibv_get_device_name(list[i]), name))
			break;
	if (!list[i])
		die("no RDMA device %s", name);
	ctx = ibv_open_device(list[i]);
	if (!ctx)
		die("open %s: %s", ibv_get_device_name(list[i]), strerror(errno));
	ibv_free_device_list(list);
	return ctx;
}

/* The other side closing TCP early means it failed: stop waiting. */
void check_alive(int sock)
{
	struct pollfd p = { .fd = sock, .events = POLLIN };
	char b;

	if (poll(&p, 1, 0) == 1 && recv(sock, &b, 1, MSG_PEEK) <= 0)
		die("the other side went away");
}


/* put_msg writes message seq (header and payload) into size bytes at p. */
void put_msg(unsigned char *p, size_t size, uint64_t seq)
{
	struct msg_hdr *h = (struct msg_hdr *)p;
	size_t n = size - sizeof(*h);

	fill(p + sizeof(*h), n, seq);
	h->seq = seq;
	h->len = n;
	h->pad = 0;
	h->sum = fnv1a(p + sizeof(*h), n);
}

/*
 * bad_msg says what is wrong with the message at p, which should be
 * message want, or returns NULL. ref is scratch space of size bytes.
 */
const char *bad_msg(const unsigned char *p, size_t size, uint64_t want,
		    unsigned char *ref)
{
	const struct msg_hdr *h = (const struct msg_hdr *)p;
	size_t n = size - sizeof(*h);

	if (h->seq < want)
		return "a duplicate";
	if (h->seq > want)
		return "out of order (a message was lost)";
	if (h->len != n || h->sum != fnv1a(p + sizeof(*h), n))
		return "failing its checksum";
	fill(ref, n, want);
	if (memcmp(ref, p + sizeof(*h), n))
		return "corrupted";
	return NULL;
}

void gid_to_hex(const union ibv_gid *gid, char hex[33])
{
	int i;

	for (i = 0; i < 16; i++)
		sprintf(hex + 2 * i, "%02x", gid->raw[i]);
}

int hex_to_gid(const char *hex, union ibv_gid *gid)
{
	int i;

	if (strlen(hex) != 32)
		return -1;
	for (i = 0; i < 16; i++)
		if (sscanf(hex + 2 * i, "%2hhx", &gid->raw[i]) != 1)
			return -1;
	return 0;
}
