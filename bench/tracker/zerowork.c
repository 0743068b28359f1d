// A responder that does no tracker work at all, for bench/tracker.sh: the
// ceiling any tracker can reach under the same wrk load on this machine.
// It answers every request head with the same small bencoded reply (a dict
// with "peers", so wrk's reply check passes), keeps connections open
// unless the request says `Connection: close`, and then closes the way
// shoal does (reply with MSG_MORE, close: the FIN rides in the reply's
// segment). One thread, epoll, TCP_DEFER_ACCEPT.
//
// Only for wrk: it assumes a request head arrives in one piece (wrk
// writes each request with one write), and parses nothing but the head's
// end and a "close" token.
//
//   zerowork   -> prints "port N" once listening on 127.0.0.1 (port 0)
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static char reply_keep[1024], reply_close[1024];
static int len_keep, len_close;

static void make_replies(void) {
    // About the size of a tracker's reply with 50 compact peers.
    char body[400];
    char peers[300];
    memset(peers, 'x', sizeof peers);
    int n = snprintf(body, sizeof body,
                     "d8:completei1e10:incompletei1e8:intervali1800e5:peers%zu:", sizeof peers);
    memcpy(body + n, peers, sizeof peers);
    n += sizeof peers;
    body[n++] = 'e';
    len_keep = snprintf(reply_keep, sizeof reply_keep,
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\n", n);
    memcpy(reply_keep + len_keep, body, n);
    len_keep += n;
    len_close = snprintf(reply_close, sizeof reply_close,
                         "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                         "connection: close\r\n\r\n", n);
    memcpy(reply_close + len_close, body, n);
    len_close += n;
}

// Answers every complete head in buf[0..n); returns 1 if the connection
// is to be closed.
static int answer(int fd, char *buf, size_t n) {
    char *p = buf, *end = buf + n;
    while (p < end) {
        char *head_end = memmem(p, end - p, "\r\n\r\n", 4);
        if (!head_end) return 0;
        // "Connection: close": the head up to and with its last line's end.
        int close_it = memmem(p, head_end + 2 - p, "close\r\n", 7) != NULL;
        if (close_it) {
            send(fd, reply_close, len_close, MSG_NOSIGNAL | MSG_MORE);
            return 1;
        }
        send(fd, reply_keep, len_keep, MSG_NOSIGNAL);
        p = head_end + 4;
    }
    return 0;
}

int main(void) {
    make_replies();
    int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1, five = 5;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(l, IPPROTO_TCP, TCP_DEFER_ACCEPT, &five, sizeof five);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t alen = sizeof a;
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 4096) ||
        getsockname(l, (struct sockaddr *)&a, &alen)) {
        perror("zerowork: listen");
        return 1;
    }
    printf("port %d\n", ntohs(a.sin_port));
    fflush(stdout);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = l};
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
    struct epoll_event evs[256];
    static char buf[16384];
    for (;;) {
        int k = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < k; i++) {
            int fd = evs[i].data.fd;
            if (fd == l) {
                int c;
                while ((c = accept4(l, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    // The request came with the connection (defer accept).
                    ssize_t r = recv(c, buf, sizeof buf, 0);
                    if (r <= 0 || answer(c, buf, r)) {
                        close(c);
                        continue;
                    }
                    struct epoll_event e = {.events = EPOLLIN | EPOLLET, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &e);
                }
                continue;
            }
            for (;;) {
                ssize_t r = recv(fd, buf, sizeof buf, 0);
                if (r == 0 || (r < 0 && errno != EAGAIN) || (r > 0 && answer(fd, buf, r))) {
                    close(fd);
                    break;
                }
                if (r < 0 || (size_t)r < sizeof buf) break;
            }
        }
    }
}
