/*
 * fleetwarden gateway plugin for Mosquitto 2.0 (plugin API v5).
 *
 * Enforces, inside the broker, what Mosquitto cannot do on its own:
 *   C2  identity from the verified client certificate (CN = device id), refusal of
 *       revoked certificate serials at CONNECT, and LIVE revocation: a "revoke"
 *       command kicks the device's open session at once (Mosquitto 2.0 neither
 *       reloads its CRL on SIGHUP nor drops live sessions).
 *   C3/C4 source-network binding: the connection's address must lie in the device's
 *       effective allowed CIDRs (refuse, or quarantine ACL by policy).
 *   C8  topic segmentation: a device reads/writes only devices/<id>/... and
 *       groups/<group>/... of its own groups; no wildcard reaching other devices.
 *   M1  shared-credential detection: a second live connection for one device.
 *   Per-device metrics (messages/bytes in and out, connects, disconnects, disconnect
 *       time, authorization failures, source addresses, topics) counted on the
 *       broker's own thread and flushed every metrics_interval_ms.
 *
 * Invariants:
 *   - Every device connection carries a certificate (the TLS listener sets
 *     require_certificate); a connection without one is a platform service on the
 *     loopback listener and must present the platform password.
 *   - The client id of a device connection equals its certificate CN, so one device
 *     has at most one live session; the username is overwritten with the CN.
 *   - Control commands ($CONTROL/fleetwarden/v1) are accepted from the platform
 *     user only.
 *   - Events and metrics leave the broker as NDJSON on fleetwarden/_gw/events and
 *     fleetwarden/_gw/metrics, topics that only the platform user may read.
 *   - All input (policy file, commands, client-supplied strings) is length-checked;
 *     a malformed line is skipped, never trusted.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/x509.h>
#include <uthash.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define PLATFORM_USER "$platform"
#define CONTROL_TOPIC "$CONTROL/fleetwarden/v1"
#define EVENTS_TOPIC "fleetwarden/_gw/events"
#define METRICS_TOPIC "fleetwarden/_gw/metrics"
#define MAX_ID 128
#define MAX_SERIAL 80
#define MAX_ADDR 64
#define MAX_TOPICS 16
#define MAX_ADDRS 8
#define MAX_LINE 65536

struct cidr {
	int family; /* AF_INET or AF_INET6 */
	unsigned char net[16];
	int bits;
};

struct dev {
	char id[MAX_ID + 1];
	/* policy (from the policy file) */
	int in_policy;
	int refused; /* registry status forbids connecting */
	int policy_quarantine; /* member of the quarantine group */
	char status[33];
	char rule[160];
	char **groups;
	int ngroups;
	struct cidr *cidrs;
	int ncidrs;
	/* live state */
	const struct mosquitto *client; /* current session, NULL when offline */
	char serial[MAX_SERIAL + 1];
	char addr[MAX_ADDR];
	int quarantined;
	time_t disconnected_at;
	/* counters since the last flush */
	uint64_t msgs_out, bytes_out, msgs_in, bytes_in;
	uint64_t conn_attempts, conn_ok, conn_refused, disconnects, authz_fail;
	double disconnect_s;
	char *topics[MAX_TOPICS];
	int ntopics;
	char *addrs[MAX_ADDRS];
	int naddrs;
	int dirty;
	UT_hash_handle hh;
};

struct serial_entry {
	char serial[MAX_SERIAL + 1];
	UT_hash_handle hh;
};

struct addr_rate {
	char addr[MAX_ADDR];
	time_t window;
	int count;
	int reported;
	UT_hash_handle hh;
};

static mosquitto_plugin_id_t *plg_id;
static struct dev *devices;
static struct serial_entry *revoked;
static struct addr_rate *rates;
static char *policy_file, *revoked_file, *platform_password;
static int source_quarantine; /* 0 = refuse, 1 = quarantine */
static int allow_unknown;
static int metrics_interval_ms = 1000;
static int max_connects_per_addr = 0; /* per 10 s window; 0 = unlimited */
static struct timespec last_flush;
/* Metrics are held back until the platform monitor has subscribed, so a broker
 * restart (monitor reconnecting) loses no counts. */
static const struct mosquitto *monitor_client;

/* Events wait here until the next tick (batched) and while no monitor is subscribed
 * (broker just restarted); bounded: beyond the bound the oldest are kept and the rest
 * counted as dropped. */
#define MAX_PENDING_EVENTS 100000
struct pending {
	struct pending *next;
	size_t len;
	char data[];
};
static struct pending *pending_head, *pending_tail;
static int pending_count;
static unsigned long pending_dropped;

/* ------------------------------------------------------------------ helpers */

static void sb_json_str(char *buf, size_t cap, size_t *len, const char *s)
{
	/* Append s as a JSON string; client-supplied text is escaped, never trusted. */
	static const char hex[] = "0123456789abcdef";
	if(*len + 2 >= cap) return;
	buf[(*len)++] = '"';
	for(; s && *s && *len + 8 < cap; s++){
		unsigned char c = (unsigned char)*s;
		if(c == '"' || c == '\\'){
			buf[(*len)++] = '\\';
			buf[(*len)++] = (char)c;
		}else if(c < 0x20 || c == 0x7f){
			buf[(*len)++] = '\\';
			buf[(*len)++] = 'u';
			buf[(*len)++] = '0';
			buf[(*len)++] = '0';
			buf[(*len)++] = hex[c >> 4];
			buf[(*len)++] = hex[c & 0xf];
		}else{
			buf[(*len)++] = (char)c;
		}
	}
	buf[(*len)++] = '"';
	buf[*len] = '\0';
}

static void sb_raw(char *buf, size_t cap, size_t *len, const char *fmt, ...)
{
	va_list ap;
	int n;
	if(*len >= cap) return;
	va_start(ap, fmt);
	n = vsnprintf(buf + *len, cap - *len, fmt, ap);
	va_end(ap);
	if(n > 0) *len += ((size_t)n < cap - *len) ? (size_t)n : cap - *len - 1;
}

static void emit_event(const char *kind, const char *device, const char *client_id,
		const char *addr, const char *serial, const char *reason, const char *detail)
{
	char buf[2048];
	size_t len = 0;
	sb_raw(buf, sizeof(buf), &len, "{\"kind\":");
	sb_json_str(buf, sizeof(buf), &len, kind);
	sb_raw(buf, sizeof(buf), &len, ",\"time\":%ld", (long)time(NULL));
	if(device){ sb_raw(buf, sizeof(buf), &len, ",\"device\":"); sb_json_str(buf, sizeof(buf), &len, device); }
	if(client_id){ sb_raw(buf, sizeof(buf), &len, ",\"client_id\":"); sb_json_str(buf, sizeof(buf), &len, client_id); }
	if(addr){ sb_raw(buf, sizeof(buf), &len, ",\"address\":"); sb_json_str(buf, sizeof(buf), &len, addr); }
	if(serial && serial[0]){ sb_raw(buf, sizeof(buf), &len, ",\"serial\":"); sb_json_str(buf, sizeof(buf), &len, serial); }
	if(reason){ sb_raw(buf, sizeof(buf), &len, ",\"reason\":"); sb_json_str(buf, sizeof(buf), &len, reason); }
	if(detail){ sb_raw(buf, sizeof(buf), &len, ",\"detail\":"); sb_json_str(buf, sizeof(buf), &len, detail); }
	sb_raw(buf, sizeof(buf), &len, "}\n");
	/* Always queued and sent in batches on the next tick: one message per connection
	 * would overflow the monitor's queue during a reconnect storm. */
	if(pending_count >= MAX_PENDING_EVENTS){ pending_dropped++; return; }
	struct pending *p = malloc(sizeof(*p) + len);
	if(!p){ pending_dropped++; return; }
	p->next = NULL;
	p->len = len;
	memcpy(p->data, buf, len);
	if(pending_tail) pending_tail->next = p; else pending_head = p;
	pending_tail = p;
	pending_count++;
}

static void flush_pending(void)
{
	/* Batch queued events into NDJSON payloads of at most ~256 KiB. */
	size_t cap = 256 * 1024, len = 0;
	char *buf;
	if(!pending_head || !monitor_client) return;
	buf = malloc(cap);
	if(!buf) return;
	while(pending_head){
		struct pending *p = pending_head;
		if(len + p->len > cap){
			mosquitto_broker_publish_copy(NULL, EVENTS_TOPIC, (int)len, buf, 1, false, NULL);
			len = 0;
		}
		memcpy(buf + len, p->data, p->len);
		len += p->len;
		pending_head = p->next;
		free(p);
		pending_count--;
	}
	pending_tail = NULL;
	if(len) mosquitto_broker_publish_copy(NULL, EVENTS_TOPIC, (int)len, buf, 1, false, NULL);
	free(buf);
	if(pending_dropped){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "fw_gateway: %lu events dropped while no monitor was subscribed", pending_dropped);
		pending_dropped = 0;
	}
}

static int parse_cidr(const char *text, struct cidr *out)
{
	char tmp[64];
	char *slash;
	int bits;
	size_t n = strlen(text);
	if(n == 0 || n >= sizeof(tmp)) return -1;
	memcpy(tmp, text, n + 1);
	slash = strchr(tmp, '/');
	if(slash){ *slash = '\0'; bits = atoi(slash + 1); }else{ bits = -1; }
	memset(out, 0, sizeof(*out));
	if(inet_pton(AF_INET, tmp, out->net) == 1){
		out->family = AF_INET;
		out->bits = bits < 0 ? 32 : bits;
		return out->bits <= 32 ? 0 : -1;
	}
	if(inet_pton(AF_INET6, tmp, out->net) == 1){
		out->family = AF_INET6;
		out->bits = bits < 0 ? 128 : bits;
		return out->bits <= 128 ? 0 : -1;
	}
	return -1;
}

static int parse_addr(const char *text, struct cidr *out)
{
	memset(out, 0, sizeof(*out));
	if(!text) return -1;
	if(inet_pton(AF_INET, text, out->net) == 1){ out->family = AF_INET; return 0; }
	if(inet_pton(AF_INET6, text, out->net) == 1){
		static const unsigned char mapped[12] = {0,0,0,0,0,0,0,0,0,0,0xff,0xff};
		if(!memcmp(out->net, mapped, 12)){ /* IPv4-mapped: compare as IPv4 */
			memmove(out->net, out->net + 12, 4);
			memset(out->net + 4, 0, 12);
			out->family = AF_INET;
		}else{
			out->family = AF_INET6;
		}
		return 0;
	}
	return -1;
}

static int cidr_contains(const struct cidr *c, const struct cidr *a)
{
	int full, rest;
	if(c->family != a->family) return 0;
	full = c->bits / 8;
	rest = c->bits % 8;
	if(memcmp(c->net, a->net, (size_t)full)) return 0;
	if(rest){
		unsigned char mask = (unsigned char)(0xff << (8 - rest));
		if((c->net[full] & mask) != (a->net[full] & mask)) return 0;
	}
	return 1;
}

static struct dev *dev_get(const char *id, int create)
{
	struct dev *d = NULL;
	size_t n = strlen(id);
	HASH_FIND(hh, devices, id, n, d);
	if(!d && create && n <= MAX_ID){
		d = calloc(1, sizeof(*d));
		if(!d) return NULL;
		memcpy(d->id, id, n + 1);
		HASH_ADD(hh, devices, id, n, d);
	}
	return d;
}

static void dev_clear_policy(struct dev *d)
{
	for(int i = 0; i < d->ngroups; i++) free(d->groups[i]);
	free(d->groups);
	free(d->cidrs);
	d->groups = NULL;
	d->cidrs = NULL;
	d->ngroups = d->ncidrs = 0;
	d->in_policy = 0;
	d->refused = 0;
	d->policy_quarantine = 0;
	d->status[0] = '\0';
	d->rule[0] = '\0';
}

static void remember(char **arr, int *n, int cap, const char *s)
{
	/* Bounded set: the first `cap` distinct values of a window are kept. */
	for(int i = 0; i < *n; i++) if(!strcmp(arr[i], s)) return;
	if(*n >= cap) return;
	arr[*n] = strndup(s, 128);
	if(arr[*n]) (*n)++;
}

static int serial_revoked(const char *serial)
{
	struct serial_entry *e = NULL;
	if(!serial || !serial[0]) return 0;
	HASH_FIND_STR(revoked, serial, e);
	return e != NULL;
}

static void serial_add(const char *serial)
{
	struct serial_entry *e = NULL;
	size_t n = strlen(serial);
	if(n == 0 || n > MAX_SERIAL) return;
	HASH_FIND_STR(revoked, serial, e);
	if(e) return;
	e = calloc(1, sizeof(*e));
	if(!e) return;
	for(size_t i = 0; i <= n; i++) e->serial[i] = (char)tolower((unsigned char)serial[i]);
	HASH_ADD_STR(revoked, serial, e);
}

/* ------------------------------------------------------------ policy files */

static char *split_field(char **cursor)
{
	char *start = *cursor, *tab;
	if(!start) return NULL;
	tab = strchr(start, '\t');
	if(tab){ *tab = '\0'; *cursor = tab + 1; }else{ *cursor = NULL; }
	return start;
}

static void load_policy_line(char *line)
{
	/* D <id> <status> <refused 0|1> <groups,..> <cidrs,..> <rule label> [<quarantine 0|1>] */
	char *cur = line, *kind, *id, *status, *refused, *groups, *cidrs, *rule, *quar;
	struct dev *d;
	kind = split_field(&cur);
	if(!kind || strcmp(kind, "D")) return;
	id = split_field(&cur); status = split_field(&cur); refused = split_field(&cur);
	groups = split_field(&cur); cidrs = split_field(&cur); rule = split_field(&cur);
	quar = split_field(&cur);
	if(!id || !status || !refused || !groups || !cidrs || !rule) return;
	if(!id[0] || strlen(id) > MAX_ID) return;
	d = dev_get(id, 1);
	if(!d) return;
	dev_clear_policy(d);
	d->in_policy = 1;
	d->refused = refused[0] == '1';
	d->policy_quarantine = quar && quar[0] == '1';
	snprintf(d->status, sizeof(d->status), "%s", status);
	snprintf(d->rule, sizeof(d->rule), "%s", rule);
	if(groups[0]){
		int cap = 1;
		for(char *p = groups; *p; p++) if(*p == ',') cap++;
		d->groups = calloc((size_t)cap, sizeof(char *));
		for(char *tok = strtok(groups, ","); tok && d->groups; tok = strtok(NULL, ",")){
			d->groups[d->ngroups] = strdup(tok);
			if(d->groups[d->ngroups]) d->ngroups++;
		}
	}
	if(cidrs[0]){
		int cap = 1;
		for(char *p = cidrs; *p; p++) if(*p == ',') cap++;
		d->cidrs = calloc((size_t)cap, sizeof(struct cidr));
		for(char *tok = strtok(cidrs, ","); tok && d->cidrs; tok = strtok(NULL, ",")){
			if(parse_cidr(tok, &d->cidrs[d->ncidrs]) == 0) d->ncidrs++;
			else mosquitto_log_printf(MOSQ_LOG_WARNING, "fw_gateway: bad CIDR for %s skipped", id);
		}
		if(d->ncidrs == 0){
			/* Every rule was unusable: fail closed with a rule nothing matches. */
			d->refused = 1;
			snprintf(d->status, sizeof(d->status), "%s", "bad-cidr-policy");
		}
	}
}

static int source_allowed(const struct dev *d, const char *addr);

static void enforce_live(struct dev *d)
{
	/* A policy change applies to the live session too: a device that may no longer
	 * connect, or must now be quarantined, is dropped and meets the new policy when it
	 * reconnects. */
	const char *why = NULL;
	if(!d->client) return;
	if(!d->in_policy && !allow_unknown) why = "unknown_device";
	else if(d->refused) why = "device_status";
	else if(d->policy_quarantine && !d->quarantined) why = "quarantine";
	else if(!d->quarantined && !source_allowed(d, d->addr)) why = "source_network";
	if(why){
		emit_event("kicked", d->id, NULL, d->addr, d->serial, why, d->rule);
		mosquitto_kick_client_by_username(d->id, false);
	}
}

static int read_lines(const char *path, void (*fn)(char *))
{
	FILE *fp;
	char *line;
	int count = 0;
	if(!path) return 0;
	fp = fopen(path, "r");
	if(!fp) return -1;
	line = malloc(MAX_LINE);
	if(!line){ fclose(fp); return -1; }
	while(fgets(line, MAX_LINE, fp)){
		size_t n = strlen(line);
		while(n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
		if(n == 0 || line[0] == '#') continue;
		fn(line);
		count++;
	}
	free(line);
	fclose(fp);
	return count;
}

static void load_revoked_line(char *line){ serial_add(line); }

static void reload_all(void)
{
	struct dev *d, *tmp;
	HASH_ITER(hh, devices, d, tmp){ dev_clear_policy(d); }
	int n = read_lines(policy_file, load_policy_line);
	int r = read_lines(revoked_file, load_revoked_line);
	HASH_ITER(hh, devices, d, tmp){
		if(d->client && serial_revoked(d->serial)){
			emit_event("kicked", d->id, NULL, d->addr, d->serial, "revoked", NULL);
			mosquitto_kick_client_by_username(d->id, false);
		}else{
			enforce_live(d);
		}
	}
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "fw_gateway: policy loaded (%d devices, %d revoked serials)", n, r);
}

/* ---------------------------------------------------------------- callbacks */

static void cert_identity(X509 *cert, char *cn, size_t cn_cap, char *serial, size_t serial_cap)
{
	X509_NAME *name = X509_get_subject_name(cert);
	int idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
	cn[0] = serial[0] = '\0';
	if(idx >= 0){
		ASN1_STRING *s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
		int len = ASN1_STRING_length(s);
		const unsigned char *data = ASN1_STRING_get0_data(s);
		/* An embedded NUL or an over-long CN is no identity at all. */
		if(len > 0 && (size_t)len < cn_cap && memchr(data, 0, (size_t)len) == NULL){
			memcpy(cn, data, (size_t)len);
			cn[len] = '\0';
		}
	}
	BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get_serialNumber(cert), NULL);
	if(bn){
		char *hex = BN_bn2hex(bn);
		if(hex){
			size_t i = 0;
			const char *h = hex;
			while(h[0] == '0' && h[1]) h++; /* canonical: no leading zeros */
			for(; h[i] && i + 1 < serial_cap; i++) serial[i] = (char)tolower((unsigned char)h[i]);
			serial[i] = '\0';
			OPENSSL_free(hex);
		}
		BN_free(bn);
	}
}

static int rate_exceeded(const char *addr)
{
	struct addr_rate *r = NULL;
	time_t now = time(NULL), window = now / 10;
	if(max_connects_per_addr <= 0 || !addr) return 0;
	HASH_FIND_STR(rates, addr, r);
	if(!r){
		if(strlen(addr) >= MAX_ADDR) return 0;
		r = calloc(1, sizeof(*r));
		if(!r) return 0;
		snprintf(r->addr, sizeof(r->addr), "%s", addr);
		HASH_ADD_STR(rates, addr, r);
	}
	if(r->window != window){ r->window = window; r->count = 0; r->reported = 0; }
	r->count++;
	return r->count > max_connects_per_addr;
}

static int refuse(struct dev *d, const char *cn, const char *client_id, const char *addr,
		const char *serial, const char *reason, const char *detail)
{
	if(d){
		d->conn_refused++;
		d->authz_fail++;
		d->dirty = 1;
		if(addr) remember(d->addrs, &d->naddrs, MAX_ADDRS, addr);
	}
	emit_event("auth_refused", cn && cn[0] ? cn : NULL, client_id, addr, serial, reason, detail);
	return MOSQ_ERR_AUTH;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	const char *addr = mosquitto_client_address(ed->client);
	const char *client_id = mosquitto_client_id(ed->client);
	X509 *cert;
	char cn[MAX_ID + 2], serial[MAX_SERIAL + 1];
	struct dev *d;
	(void)event; (void)userdata;

	if(rate_exceeded(addr)){
		struct addr_rate *r = NULL;
		HASH_FIND_STR(rates, addr, r);
		if(r && !r->reported){ /* one event per address per window, not per attempt */
			r->reported = 1;
			emit_event("auth_refused", NULL, client_id, addr, NULL, "rate_limited", "connection attempts per address exceeded");
		}
		return MOSQ_ERR_AUTH;
	}

	cert = mosquitto_client_certificate(ed->client);
	if(!cert){
		/* No certificate: only the platform on the loopback listener. */
		if(ed->username && !strcmp(ed->username, PLATFORM_USER) && platform_password
				&& ed->password && strlen(ed->password) == strlen(platform_password)
				&& CRYPTO_memcmp(ed->password, platform_password, strlen(platform_password)) == 0){
			return MOSQ_ERR_SUCCESS;
		}
		return refuse(NULL, NULL, client_id, addr, NULL, "no_certificate", "no client certificate and not the platform user");
	}
	cert_identity(cert, cn, sizeof(cn), serial, sizeof(serial));
	X509_free(cert);

	if(!cn[0] || strlen(cn) > MAX_ID || cn[0] == '$'){
		return refuse(NULL, NULL, client_id, addr, serial, "bad_identity", "certificate has no usable CN");
	}
	d = dev_get(cn, 0);
	if(!d || !d->in_policy){
		if(!allow_unknown){
			return refuse(d, cn, client_id, addr, serial, "unknown_device", "certificate CN is not a registered device");
		}
		d = dev_get(cn, 1);
		if(!d) return MOSQ_ERR_AUTH;
	}
	d->conn_attempts++;
	d->dirty = 1;
	if(serial_revoked(serial)){
		return refuse(d, cn, client_id, addr, serial, "revoked", "certificate serial is revoked");
	}
	if(d->refused){
		return refuse(d, cn, client_id, addr, serial, "device_status", d->status);
	}
	if(!client_id || strcmp(client_id, cn)){
		return refuse(d, cn, client_id, addr, serial, "client_id_mismatch", "client id must equal the certificate CN");
	}
	d->quarantined = d->policy_quarantine;
	if(d->policy_quarantine){
		emit_event("quarantined", cn, client_id, addr, serial, "policy", "member of the quarantine group");
	}
	if(!source_allowed(d, addr)){
		if(!source_quarantine){
			return refuse(d, cn, client_id, addr, serial, "source_network", d->rule);
		}
		if(!d->quarantined){
			d->quarantined = 1;
			emit_event("quarantined", cn, client_id, addr, serial, "source_network", d->rule);
		}
	}
	if(d->client && d->client != ed->client){
		/* A live session exists for this identity: one of them is a copy (M1). */
		emit_event("shared_credential", cn, d->addr, addr, serial,
				strcmp(d->addr, addr ? addr : "") ? "concurrent_addresses" : "duplicate_client_id",
				"a second connection presented this device identity while a session was live");
	}
	if(mosquitto_set_username(ed->client, cn) != MOSQ_ERR_SUCCESS) return MOSQ_ERR_AUTH;
	if(d->disconnected_at){
		d->disconnect_s += difftime(time(NULL), d->disconnected_at);
		d->disconnected_at = 0;
	}
	d->client = ed->client;
	snprintf(d->serial, sizeof(d->serial), "%s", serial);
	snprintf(d->addr, sizeof(d->addr), "%s", addr ? addr : "");
	d->conn_ok++;
	if(addr) remember(d->addrs, &d->naddrs, MAX_ADDRS, addr);
	emit_event("connected", cn, client_id, addr, serial, d->quarantined ? "quarantined" : NULL, NULL);
	return MOSQ_ERR_SUCCESS;
}

static int source_allowed(const struct dev *d, const char *addr)
{
	struct cidr a;
	if(d->ncidrs == 0) return 1;
	if(parse_addr(addr, &a) != 0) return 0;
	for(int i = 0; i < d->ncidrs; i++) if(cidr_contains(&d->cidrs[i], &a)) return 1;
	return 0;
}

static int topic_allowed(const struct dev *d, const char *topic)
{
	/* Prefix checks on whole levels; a wildcard can only follow an allowed prefix. */
	size_t n;
	if(d->quarantined){
		n = strlen("quarantine/");
		return !strncmp(topic, "quarantine/", n) && !strncmp(topic + n, d->id, strlen(d->id))
			&& topic[n + strlen(d->id)] == '/';
	}
	n = strlen("devices/");
	if(!strncmp(topic, "devices/", n)){
		size_t idl = strlen(d->id);
		return !strncmp(topic + n, d->id, idl) && (topic[n + idl] == '/' || topic[n + idl] == '\0');
	}
	n = strlen("groups/");
	if(!strncmp(topic, "groups/", n)){
		for(int i = 0; i < d->ngroups; i++){
			size_t gl = strlen(d->groups[i]);
			if(!strncmp(topic + n, d->groups[i], gl) && topic[n + gl] == '/') return 1;
		}
	}
	return 0;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *user = mosquitto_client_username(ed->client);
	struct dev *d;
	(void)event; (void)userdata;
	if(!user) return MOSQ_ERR_ACL_DENIED;
	if(!strcmp(user, PLATFORM_USER) && mosquitto_client_id(ed->client)){
		if(ed->access == MOSQ_ACL_SUBSCRIBE && ed->topic && !strcmp(ed->topic, "fleetwarden/_gw/#")){
			monitor_client = ed->client;
		}
		return MOSQ_ERR_SUCCESS;
	}
	d = dev_get(user, 0);
	if(!d) return MOSQ_ERR_ACL_DENIED;
	if(ed->access == MOSQ_ACL_UNSUBSCRIBE) return MOSQ_ERR_SUCCESS;
	if(!ed->topic || !topic_allowed(d, ed->topic)){
		d->authz_fail++;
		d->dirty = 1;
		remember(d->topics, &d->ntopics, MAX_TOPICS, ed->topic ? ed->topic : "");
		return MOSQ_ERR_ACL_DENIED;
	}
	if(ed->access == MOSQ_ACL_WRITE){
		d->msgs_out++;
		d->bytes_out += ed->payloadlen;
		d->dirty = 1;
		if(d->ntopics < MAX_TOPICS) remember(d->topics, &d->ntopics, MAX_TOPICS, ed->topic);
	}else if(ed->access == MOSQ_ACL_READ){
		d->msgs_in++;
		d->bytes_in += ed->payloadlen;
		d->dirty = 1;
	}else if(ed->access == MOSQ_ACL_SUBSCRIBE){
		remember(d->topics, &d->ntopics, MAX_TOPICS, ed->topic);
	}
	return MOSQ_ERR_SUCCESS;
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	const char *user = mosquitto_client_username(ed->client);
	struct dev *d;
	char reason[16];
	(void)event; (void)userdata;
	if(ed->client == monitor_client) monitor_client = NULL;
	if(!user) return MOSQ_ERR_SUCCESS;
	d = dev_get(user, 0);
	if(!d || d->client != ed->client) return MOSQ_ERR_SUCCESS; /* refused or superseded */
	d->client = NULL;
	d->disconnects++;
	d->disconnected_at = time(NULL);
	d->dirty = 1;
	snprintf(reason, sizeof(reason), "%d", ed->reason);
	emit_event("disconnected", d->id, mosquitto_client_id(ed->client), mosquitto_client_address(ed->client), d->serial, reason, NULL);
	return MOSQ_ERR_SUCCESS;
}

static void revoke(const char *device, const char *serial)
{
	struct dev *d;
	if(serial && serial[0]) serial_add(serial);
	d = device && device[0] ? dev_get(device, 0) : NULL;
	if(!d){
		/* Revoked by serial only: find the live session carrying it. */
		struct dev *it, *tmp;
		HASH_ITER(hh, devices, it, tmp){
			if(it->client && serial && serial[0] && !strcasecmp(it->serial, serial)){ d = it; break; }
		}
	}
	if(d && d->client && (!serial || !serial[0] || !strcasecmp(d->serial, serial))){
		emit_event("kicked", d->id, NULL, d->addr, d->serial, "revoked", NULL);
		mosquitto_kick_client_by_username(d->id, false);
	}
}

static int on_control(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_control *ed = event_data;
	const char *user = mosquitto_client_username(ed->client);
	char *copy, *line, *save = NULL;
	(void)event; (void)userdata;
	void *cert = mosquitto_client_certificate(ed->client);
	if(cert){ X509_free(cert); return MOSQ_ERR_ACL_DENIED; } /* devices never */
	if(!user || strcmp(user, PLATFORM_USER)) return MOSQ_ERR_ACL_DENIED;
	if(ed->payloadlen == 0 || ed->payloadlen > 1024 * 1024) return MOSQ_ERR_INVAL;
	copy = malloc(ed->payloadlen + 1);
	if(!copy) return MOSQ_ERR_NOMEM;
	memcpy(copy, ed->payload, ed->payloadlen);
	copy[ed->payloadlen] = '\0';
	/* One command per line: "revoke <device> <serial>", "reload", "kick <device>". */
	for(line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)){
		char *cur = line;
		char *cmd = split_field(&cur);
		if(!cmd) continue;
		if(!strcmp(cmd, "revoke")){
			char *dev = split_field(&cur);
			char *ser = split_field(&cur);
			revoke(dev, ser);
		}else if(!strcmp(cmd, "kick")){
			char *dev = split_field(&cur);
			if(dev && dev[0]) mosquitto_kick_client_by_username(dev, false);
		}else if(!strcmp(cmd, "reload")){
			reload_all();
		}
	}
	free(copy);
	return MOSQ_ERR_SUCCESS;
}

static void flush_metrics(void)
{
	struct dev *d, *tmp;
	size_t cap = 1 << 20, len = 0;
	char *buf = malloc(cap);
	if(!buf) return;
	HASH_ITER(hh, devices, d, tmp){
		if(!d->dirty) continue;
		if(len + 32768 > cap){
			mosquitto_broker_publish_copy(NULL, METRICS_TOPIC, (int)len, buf, 1, false, NULL);
			len = 0;
		}
		sb_raw(buf, cap, &len, "{\"device\":");
		sb_json_str(buf, cap, &len, d->id);
		sb_raw(buf, cap, &len,
				",\"time\":%ld,\"msgs_out\":%llu,\"bytes_out\":%llu,\"msgs_in\":%llu,\"bytes_in\":%llu,"
				"\"conn_attempts\":%llu,\"conn_ok\":%llu,\"conn_refused\":%llu,\"disconnects\":%llu,"
				"\"authz_fail\":%llu,\"disconnect_s\":%.0f,\"connected\":%s,\"topics\":[",
				(long)time(NULL),
				(unsigned long long)d->msgs_out, (unsigned long long)d->bytes_out,
				(unsigned long long)d->msgs_in, (unsigned long long)d->bytes_in,
				(unsigned long long)d->conn_attempts, (unsigned long long)d->conn_ok,
				(unsigned long long)d->conn_refused, (unsigned long long)d->disconnects,
				(unsigned long long)d->authz_fail, d->disconnect_s, d->client ? "true" : "false");
		for(int i = 0; i < d->ntopics; i++){
			if(i) sb_raw(buf, cap, &len, ",");
			sb_json_str(buf, cap, &len, d->topics[i]);
			free(d->topics[i]);
		}
		sb_raw(buf, cap, &len, "],\"addresses\":[");
		for(int i = 0; i < d->naddrs; i++){
			if(i) sb_raw(buf, cap, &len, ",");
			sb_json_str(buf, cap, &len, d->addrs[i]);
			free(d->addrs[i]);
		}
		sb_raw(buf, cap, &len, "]}\n");
		d->ntopics = d->naddrs = 0;
		d->msgs_out = d->bytes_out = d->msgs_in = d->bytes_in = 0;
		d->conn_attempts = d->conn_ok = d->conn_refused = d->disconnects = d->authz_fail = 0;
		d->disconnect_s = 0;
		d->dirty = 0;
	}
	if(len) mosquitto_broker_publish_copy(NULL, METRICS_TOPIC, (int)len, buf, 1, false, NULL);
	free(buf);
}

static int on_tick(int event, void *event_data, void *userdata)
{
	struct timespec now;
	long elapsed_ms;
	(void)event; (void)event_data; (void)userdata;
	flush_pending();
	clock_gettime(CLOCK_MONOTONIC, &now);
	elapsed_ms = (now.tv_sec - last_flush.tv_sec) * 1000 + (now.tv_nsec - last_flush.tv_nsec) / 1000000;
	if(HASH_COUNT(rates) > 10000){ /* bound memory under a flood of addresses */
		struct addr_rate *r, *tmp;
		HASH_ITER(hh, rates, r, tmp){ HASH_DEL(rates, r); free(r); }
	}
	if(elapsed_ms >= metrics_interval_ms && monitor_client){
		last_flush = now;
		flush_metrics();
	}
	return MOSQ_ERR_SUCCESS;
}

/* --------------------------------------------------------------- lifecycle */

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **user_data,
		struct mosquitto_opt *opts, int opt_count)
{
	(void)user_data;
	plg_id = identifier;
	for(int i = 0; i < opt_count; i++){
		if(!strcmp(opts[i].key, "policy_file")) policy_file = strdup(opts[i].value);
		else if(!strcmp(opts[i].key, "revoked_file")) revoked_file = strdup(opts[i].value);
		else if(!strcmp(opts[i].key, "platform_password")) platform_password = strdup(opts[i].value);
		else if(!strcmp(opts[i].key, "source_policy")) source_quarantine = !strcmp(opts[i].value, "quarantine");
		else if(!strcmp(opts[i].key, "unknown_devices")) allow_unknown = !strcmp(opts[i].value, "allow");
		else if(!strcmp(opts[i].key, "metrics_interval_ms")) metrics_interval_ms = atoi(opts[i].value);
		else if(!strcmp(opts[i].key, "max_connects_per_addr")) max_connects_per_addr = atoi(opts[i].value);
	}
	if(metrics_interval_ms < 50) metrics_interval_ms = 50;
	if(!platform_password || strlen(platform_password) < 16){
		mosquitto_log_printf(MOSQ_LOG_ERR, "fw_gateway: plugin_opt_platform_password missing or too short");
		return MOSQ_ERR_INVAL;
	}
	clock_gettime(CLOCK_MONOTONIC, &last_flush);
	reload_all();
	if(mosquitto_callback_register(plg_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL)
			|| mosquitto_callback_register(plg_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL)
			|| mosquitto_callback_register(plg_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, NULL)
			|| mosquitto_callback_register(plg_id, MOSQ_EVT_TICK, on_tick, NULL, NULL)
			|| mosquitto_callback_register(plg_id, MOSQ_EVT_CONTROL, on_control, CONTROL_TOPIC, NULL)){
		return MOSQ_ERR_UNKNOWN;
	}
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "fw_gateway: plugin ready");
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *user_data, struct mosquitto_opt *opts, int opt_count)
{
	struct dev *d, *tmp;
	struct serial_entry *s, *stmp;
	struct addr_rate *r, *rtmp;
	(void)user_data; (void)opts; (void)opt_count;
	mosquitto_callback_unregister(plg_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(plg_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plg_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
	mosquitto_callback_unregister(plg_id, MOSQ_EVT_TICK, on_tick, NULL);
	mosquitto_callback_unregister(plg_id, MOSQ_EVT_CONTROL, on_control, CONTROL_TOPIC);
	HASH_ITER(hh, devices, d, tmp){
		HASH_DEL(devices, d);
		dev_clear_policy(d);
		for(int i = 0; i < d->ntopics; i++) free(d->topics[i]);
		for(int i = 0; i < d->naddrs; i++) free(d->addrs[i]);
		free(d);
	}
	HASH_ITER(hh, revoked, s, stmp){ HASH_DEL(revoked, s); free(s); }
	HASH_ITER(hh, rates, r, rtmp){ HASH_DEL(rates, r); free(r); }
	while(pending_head){ struct pending *p = pending_head; pending_head = p->next; free(p); }
	pending_tail = NULL;
	free(policy_file); free(revoked_file); free(platform_password);
	return MOSQ_ERR_SUCCESS;
}
