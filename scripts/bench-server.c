/* kaisar/bench-sink: the container side of `kaisar bench tunnel` (node/bench_tunnel.py).
   One TCP port, one process per connection. The first byte picks the mode:
   'S' sink: read to EOF, then answer "<sha256 hex of what arrived> <bytes>\n";
   'E' echo: write back everything read, until EOF.
   Static (gcc -static ... -lcrypto) so it runs in a busybox rootfs. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static char buf[1 << 20];

static int write_all(int fd, const char *p, size_t n) {
    while (n) { ssize_t w = write(fd, p, n); if (w <= 0) return -1; p += w; n -= (size_t)w; }
    return 0;
}

static void serve(int fd) {
    char mode;
    if (read(fd, &mode, 1) != 1) return;
    if (mode == 'E') {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        ssize_t r;
        while ((r = read(fd, buf, 65536)) > 0) if (write_all(fd, buf, (size_t)r)) return;
        return;
    }
    if (mode != 'S') return;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    unsigned long long total = 0;
    ssize_t r;
    while ((r = read(fd, buf, sizeof buf)) > 0) { EVP_DigestUpdate(ctx, buf, (size_t)r); total += (unsigned long long)r; }
    unsigned char md[32]; unsigned int len = 0;
    EVP_DigestFinal_ex(ctx, md, &len);
    char out[128]; int o = 0;
    for (unsigned i = 0; i < len; i++) o += sprintf(out + o, "%02x", md[i]);
    o += sprintf(out + o, " %llu\n", total);
    write_all(fd, out, (size_t)o);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--check") == 0) {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        return !(ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL));
    }
    int port = argc > 1 ? atoi(argv[1]) : 7008;
    signal(SIGCHLD, SIG_IGN);
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET; a.sin_port = htons((unsigned short)port); a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 64)) { perror("listen"); return 1; }
    printf("kaisar-bench-server listening on %d\n", port); fflush(stdout);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        if (fork() == 0) { close(s); serve(c); close(c); _exit(0); }
        close(c);
    }
}
