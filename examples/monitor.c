/* SPDX-License-Identifier: MIT */
/*
 * The "top" of a Tempest cluster: live nodes (id, address, roles, uptime,
 * counters), queues (ready, processing, dead letters, live workers) and
 * services with their responders, read with tempest_cluster_status() once
 * a second.
 *
 *   monitor [--redis URL] [--namespace NS] [--once] [--json]
 *
 * --once prints one snapshot and exits (1 when Redis cannot be read);
 * --json prints each snapshot as one line of JSON, for scripts.
 */
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

typedef struct monitor {
    tempest_node *node;
    struct event *tick;
    const char *url;
    bool once, json, tty;
    bool busy; /* a read is in flight */
    int rc;
} monitor;

static void uptime(char *buf, size_t cap, json_int_t ms) {
    long long s = (long long)(ms / 1000);
    if (s >= 86400)
        snprintf(buf, cap, "%lldd%02lldh", s / 86400, s % 86400 / 3600);
    else
        snprintf(buf, cap, "%02lld:%02lld:%02lld", s / 3600, s % 3600 / 60, s % 60);
}

/* "a,b,c" from an array of strings, or of objects' `key` member. */
static void joined(char *buf, size_t cap, json_t *array, const char *key) {
    size_t i, used = 0;
    json_t *v;
    buf[0] = '\0';
    json_array_foreach(array, i, v) {
        const char *s = json_string_value(key ? json_object_get(v, key) : v);
        int n = snprintf(buf + used, cap - used, "%s%s", used ? "," : "", s ? s : "?");
        if (n < 0 || (size_t)n >= cap - used)
            break;
        used += (size_t)n;
    }
    if (!used)
        snprintf(buf, cap, "-");
}

/* "front: requests=5 in_flight=0 ...; worker: ..." */
static void counters(char *buf, size_t cap, json_t *stats) {
    size_t used = 0;
    const char *role, *name;
    json_t *part, *v;
    buf[0] = '\0';
    json_object_foreach(stats, role, part) {
        int n = snprintf(buf + used, cap - used, "%s%s:", used ? "  " : "", role);
        if (n < 0 || (size_t)n >= cap - used)
            return;
        used += (size_t)n;
        json_object_foreach(part, name, v) {
            n = snprintf(buf + used, cap - used, " %s=%" JSON_INTEGER_FORMAT, name,
                         json_integer_value(v));
            if (n < 0 || (size_t)n >= cap - used)
                return;
            used += (size_t)n;
        }
    }
}

static void print_nodes(json_t *nodes) {
    printf("NODES %zu\n%6s  %-21s %-16s %8s %10s  %-26s %s\n", json_array_size(nodes), "ID",
           "ADDRESS", "HOST", "PID", "UPTIME", "ROLES", "COUNTERS");
    size_t i;
    json_t *n;
    json_array_foreach(nodes, i, n) {
        char up[32], roles[128], stats[512];
        const char *addr = json_string_value(json_object_get(n, "address"));
        const char *host = json_string_value(json_object_get(n, "host"));
        uptime(up, sizeof up, json_integer_value(json_object_get(n, "uptime_ms")));
        joined(roles, sizeof roles, json_object_get(n, "roles"), NULL);
        counters(stats, sizeof stats, json_object_get(n, "stats"));
        printf("%6" JSON_INTEGER_FORMAT "  %-21s %-16.16s %8" JSON_INTEGER_FORMAT
               " %10s  %-26s %s\n",
               json_integer_value(json_object_get(n, "id")), addr ? addr : "-", host ? host : "?",
               json_integer_value(json_object_get(n, "pid")), up, roles, stats);
    }
}

static void print_queues(json_t *queues) {
    printf("\nQUEUES %zu\n%-24s %10s %10s %10s %8s\n", json_array_size(queues), "NAME", "READY",
           "PROCESSING", "DEAD", "WORKERS");
    size_t i;
    json_t *q;
    json_array_foreach(queues, i, q) {
        const char *name = json_string_value(json_object_get(q, "name"));
        printf("%-24s %10" JSON_INTEGER_FORMAT " %10" JSON_INTEGER_FORMAT " %10" JSON_INTEGER_FORMAT
               " %8" JSON_INTEGER_FORMAT "\n",
               name ? name : "?", json_integer_value(json_object_get(q, "ready")),
               json_integer_value(json_object_get(q, "processing")),
               json_integer_value(json_object_get(q, "dead")),
               json_integer_value(json_object_get(q, "workers")));
    }
}

static void print_services(json_t *services) {
    printf("\nSERVICES %zu\n%-24s %-16s %s\n", json_array_size(services), "SERVICE", "NAMESPACE",
           "RESPONDERS");
    size_t i;
    json_t *s;
    json_array_foreach(services, i, s) {
        char who[1024];
        const char *name = json_string_value(json_object_get(s, "service"));
        const char *ns = json_string_value(json_object_get(s, "namespace"));
        joined(who, sizeof who, json_object_get(s, "responders"), NULL);
        printf("%-24s %-16s %s\n", name ? name : "?", ns ? ns : "?", who);
    }
}

static void render(monitor *m, json_t *snap) {
    if (m->json) {
        char *line = json_dumps(snap, JSON_COMPACT);
        if (line)
            printf("%s\n", line);
        free(line);
        fflush(stdout);
        return;
    }
    char when[64];
    time_t now = time(NULL);
    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", localtime(&now));
    if (m->tty && !m->once)
        printf("\033[H\033[2J"); /* home, clear: a new frame */
    printf("tempest monitor  namespace %s  %s  %s\n\n",
           json_string_value(json_object_get(snap, "namespace")), m->url ? m->url : "", when);
    print_nodes(json_object_get(snap, "nodes"));
    print_queues(json_object_get(snap, "queues"));
    print_services(json_object_get(snap, "services"));
    if (!m->tty && !m->once)
        printf("\n");
    fflush(stdout);
}

static void on_status(tempest_node *node, int status, json_t *snapshot, void *arg) {
    (void)node;
    monitor *m = arg;
    m->busy = false;
    if (status == 0)
        render(m, snapshot);
    else
        fprintf(stderr, "monitor: %s: %s\n", tempest_strerror(status), tempest_node_errstr(node));
    if (m->once) {
        m->rc = status == 0 ? 0 : 1;
        event_base_loopbreak(tempest_node_base(node));
    }
}

static void on_tick(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    monitor *m = arg;
    if (m->busy || tempest_node_state(m->node) != TEMPEST_NODE_UP)
        return; /* the node reconnects by itself; the next tick tries again */
    int rc = tempest_cluster_status(m->node, NULL, on_status, m);
    if (rc == 0) {
        m->busy = true;
        return;
    }
    fprintf(stderr, "monitor: %s\n", tempest_strerror(rc));
    if (m->once) {
        m->rc = 1;
        event_base_loopbreak(tempest_node_base(m->node));
    }
}

static void on_signal(evutil_socket_t sig, short what, void *base) {
    (void)sig, (void)what;
    event_base_loopbreak(base);
}

static void usage(void) {
    fprintf(stderr, "usage: monitor [--redis URL] [--namespace NS] [--once] [--json]\n");
    exit(2);
}

int main(int argc, char **argv) {
    static const struct option longopts[] = {
        {"redis", required_argument, 0, 'r'}, {"namespace", required_argument, 0, 'n'},
        {"once", no_argument, 0, 'o'},        {"json", no_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    tempest_node_options no = {
        .log = log_stderr, .log_arg = "monitor", .log_level = TEMPEST_LOG_ERROR};
    monitor m = {.tty = isatty(STDOUT_FILENO)};
    for (int c; (c = getopt_long(argc, argv, "", longopts, NULL)) != -1;) {
        if (c == 'r')
            no.redis_url = m.url = optarg;
        else if (c == 'n')
            no.namespace = optarg;
        else if (c == 'o')
            m.once = true;
        else if (c == 'j')
            m.json = true;
        else
            usage();
    }
    if (optind != argc)
        usage();
    tempest_error err;
    m.node = tempest_node_new(NULL, &no, &err);
    if (m.node == NULL) {
        fprintf(stderr, "monitor: %s\n", err.message);
        return 2;
    }
    if (wait_for_redis(m.node, 5) != 0) {
        fprintf(stderr, "monitor: cannot reach Redis: %s\n", tempest_node_errstr(m.node));
        tempest_node_free(m.node);
        return 1;
    }
    struct event_base *base = tempest_node_base(m.node);
    m.tick = event_new(base, -1, EV_PERSIST, on_tick, &m);
    struct event *sigs[2] = {evsignal_new(base, SIGINT, on_signal, base),
                             evsignal_new(base, SIGTERM, on_signal, base)};
    struct timeval second = {1, 0};
    if (m.tick == NULL || sigs[0] == NULL || sigs[1] == NULL) {
        fprintf(stderr, "monitor: out of memory\n");
        return 1;
    }
    event_add(m.tick, &second);
    evsignal_add(sigs[0], NULL);
    evsignal_add(sigs[1], NULL);
    m.rc = 0;
    on_tick(-1, 0, &m); /* the first frame now, not in a second */
    event_base_dispatch(base);
    event_free(m.tick);
    event_free(sigs[0]);
    event_free(sigs[1]);
    tempest_node_free(m.node);
    return m.rc;
}
