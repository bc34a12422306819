/* conduit.c - broker module carrying JSON packets from compute jobs
 * to the one datastore job attached to it
 *
 * A datastore job loads this module on its own broker rank and holds a
 * streaming conduit.attach request.  Compute jobs send conduit.put with
 * one packet, {"data":"<a JSON object, as a string>"}, or a batch of
 * them, {"packets":[{"data":...},...]}; the module validates the packets
 * and forwards them to the datastore in batches, as responses on the
 * attach stream.  The datastore stores each batch and answers with
 * conduit.ack; only then does the module respond to the puts, so an
 * acknowledged put is a stored packet.
 *
 * A batch put is atomic: if any of its packets is malformed, the whole
 * put is refused before anything is queued.  Its packets get consecutive
 * ids and always travel in the same batch to the datastore.
 *
 * Batching: at most 'unacked_batches' batches are sent to the datastore
 * and not yet acknowledged, besides full ones (FULL_BATCH_PACKETS).  Puts
 * arriving meanwhile queue and leave together in the next batch, so
 * batches grow with load while an idle conduit forwards each packet at
 * once.  A batch is JSON text built by
 * appending each packet's validated data as it came, so no packet is
 * encoded twice.  Its header names the ids it carries, so a datastore
 * that cannot decode it can still refuse it by id range.
 *
 * Nothing here blocks the broker: a slow datastore only makes the queue
 * longer, up to 'backlog_packets' held packets or 'backlog_bytes' of their
 * data, after which puts fail with EAGAIN.
 *
 * Streams: the module serves one stream, and answers under the name it
 * was loaded as (flux module load --name, "conduit" by default): its
 * topics are <name>.put, <name>.attach, <name>.ack and <name>.stats-get
 * (what `flux module stats <name>` reads).  One broker can hold a module
 * per stream, each with its own name.
 *
 * Lifetime: the module serves one datastore.  When that datastore
 * disconnects (it exited, was cancelled or was killed), held puts fail
 * with ECONNRESET and the module exits, so the broker unloads it and
 * nothing is left in the way of the next datastore.
 *
 * Only the instance owner may use the conduit (see the handler table).
 */

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <flux/core.h>
#include <jansson.h>

/* Sizes of arrays, so macros rather than constants. */
#define MAX_UNACKED_BATCHES 8
/* A burst of puts queues ahead of the datastore's acknowledgement, which
 * the module only reads after them; meanwhile an outbox that has gathered
 * FULL_BATCH_PACKETS leaves anyway, up to MAX_BATCHES_IN_FLIGHT batches,
 * so that the datastore decodes it while the module takes the rest
 * (docs/performance.md).
 */
#define FULL_BATCH_PACKETS 1024
#define MAX_BATCHES_IN_FLIGHT 64
#define PUT_ERRSTR_SIZE 320 // room for a jansson error text and more
/* Room kept in front of a batch's packets for its header, which is
 * written when the batch leaves: {"first":F,"last":L,"packets":[
 * takes at most 69 bytes with 20-character ids.
 */
#define BATCH_HEAD_ROOM 80
#define TOPIC_SIZE 128 // a module name and a method

static const size_t default_unacked_batches = 4;
static const size_t default_max_data = 65536;
static const size_t default_max_depth = 64;
static const size_t max_max_depth = 2000; // jansson parses up to 2048
static const size_t default_backlog_packets = 65536;
static const size_t default_backlog_bytes = 64 * 1024 * 1024;
static const size_t max_batch_packets = 4096;
static const size_t max_producer_chars = 256;
static const size_t outbox_initial_size = 4096;

/* Kept in the .so file so that a reader can tell, with a byte search,
 * which flux-core it was built against.
 */
__attribute__ ((used)) static const char conduit_version_marker[] =
    "conduit-flux-core-version=" FLUX_CORE_VERSION_STRING;

/* The next batch for the datastore, as the text of its response payload:
 * {"first":F,"last":L,"packets":[{"id":N,"producer":"P","seq":S,
 * "data":{...}},...]}
 */
struct outbox {
    char *text;       // BATCH_HEAD_ROOM bytes, then the packets, then '\0'
    size_t len;       // of text, the room for the header included
    size_t size;      // allocated
    size_t count;     // packets in it
    json_int_t first; // id of the first one
    json_int_t last;  // id of the last one
};

static const char batch_tail[] = "]}";

/* The answer to a put, {"id":N,"duplicate":B}, and to a batch put,
 * {"packets":[{"id":N,"duplicate":B},...]}.
 */
static const char answer_head[] = "{\"packets\":[";
static const char answer_item[] = "%s{\"id\":%" JSON_INTEGER_FORMAT ",\"duplicate\":%s}";

/* A valid packet: its data text and, if numbered, its producer and seq.
 * The pointers are borrowed from the put request.
 */
struct packet {
    const char *data;
    size_t datalen;
    json_t *producer; // a JSON string, or NULL
    json_int_t seq;   // 0 when unnumbered
};

/* A put waiting for the datastore's acknowledgement of its packets.
 */
struct held_put {
    struct held_put *next;
    const flux_msg_t *msg;
    json_int_t first; // its packets have ids first .. first + count - 1
    size_t count;
    size_t bytes;     // of their data
    bool batch;       // answer with {"packets":[...]}
};

/* Why a put was refused: the text for its sender (errno says how).
 */
struct put_error {
    char text[PUT_ERRSTR_SIZE];
};

/* Topics of the handler table, made from the module's name.
 */
struct topics {
    char put[TOPIC_SIZE];
    char attach[TOPIC_SIZE];
    char ack[TOPIC_SIZE];
    char stats_get[TOPIC_SIZE];
    char disconnect[TOPIC_SIZE];
};

struct conduit {
    flux_t *h;
    uint32_t rank;
    const char *name;           // loaded as, e.g. conduit or conduit-metrics
    struct topics topics;
    flux_msg_handler_t **handlers;
    size_t unacked_batches;     // most batches sent and not yet acknowledged
    size_t max_data;            // largest accepted "data" string, in bytes
    size_t max_depth;           // deepest accepted "data", in levels
    size_t backlog_packets;     // most packets held at once
    size_t backlog_bytes;       // most data held at once, in bytes
    const flux_msg_t *attach;   // the datastore's streaming request, or NULL
    json_int_t datastore_jobid; // as the datastore declared it (0: not a job)
    json_int_t next_id;         // id of the next packet
    struct outbox outbox;       // packets not yet sent to the datastore
    struct held_put *head;      // held puts, in id order
    struct held_put *tail;
    size_t held;                // packets in the held puts
    size_t held_bytes;          // their data, in bytes
    json_int_t batch_last[MAX_BATCHES_IN_FLIGHT]; // last id of each unacked batch
    size_t batches;             // batches sent and not yet acknowledged
    json_int_t sent_upto;       // highest id sent to the datastore
    json_int_t received;        // packets accepted, and the ones below
    json_int_t stored;
    json_int_t duplicates;
    json_int_t rejected;        // packets refused, by the module or datastore
};

/* Fill 'error' like flux-core's errprintf(); return -1.
 */
static int errprintf (flux_error_t *error, const char *fmt, ...)
{
    va_list ap;
    int saved_errno = errno;

    va_start (ap, fmt);
    vsnprintf (error->text, sizeof (error->text), fmt, ap);
    va_end (ap);
    errno = saved_errno;
    return -1;
}

/* Refuse a put: set errno and the sender's message, which names the
 * packet (index >= 0) when the put is a batch; return -1.
 */
static int put_refuse (struct put_error *e,
                       int errnum,
                       long index,
                       const char *fmt,
                       ...)
{
    va_list ap;
    int n;

    if (index >= 0)
        n = snprintf (e->text,
                      sizeof (e->text),
                      "conduit.put: packet %ld: ",
                      index);
    else
        n = snprintf (e->text, sizeof (e->text), "conduit.put: ");
    va_start (ap, fmt);
    vsnprintf (e->text + n, sizeof (e->text) - n, fmt, ap);
    va_end (ap);
    errno = errnum;
    return -1;
}

static bool same_sender (const flux_msg_t *a, const flux_msg_t *b)
{
    const char *sa = flux_msg_route_first (a);
    const char *sb = flux_msg_route_first (b);

    return sa && sb && strcmp (sa, sb) == 0;
}

static int outbox_reserve (struct outbox *ob, size_t more)
{
    if (ob->len + more + 1 > ob->size) {
        size_t size = ob->size ? ob->size : outbox_initial_size;
        char *text;
        while (ob->len + more + 1 > size)
            size *= 2;
        if (!(text = realloc (ob->text, size)))
            return -1;
        ob->text = text;
        ob->size = size;
    }
    return 0;
}

static int outbox_write (struct outbox *ob, const char *s, size_t len)
{
    if (outbox_reserve (ob, len) < 0)
        return -1;
    memcpy (ob->text + ob->len, s, len);
    ob->len += len;
    ob->text[ob->len] = '\0';
    return 0;
}

static int outbox_printf (struct outbox *ob, const char *fmt, ...)
{
    char buf[64];
    va_list ap;
    int n;

    va_start (ap, fmt);
    n = vsnprintf (buf, sizeof (buf), fmt, ap);
    va_end (ap);
    if (n < 0 || (size_t)n >= sizeof (buf)) {
        errno = EINVAL;
        return -1;
    }
    return outbox_write (ob, buf, n);
}

/* Write a JSON string value, encoded.  An encoded byte takes at most 6
 * characters (\u00XX), so one pass into reserved room suffices.
 */
static int outbox_write_json (struct outbox *ob, const json_t *s)
{
    size_t room = 6 * json_string_length (s) + 2;
    size_t n;

    if (outbox_reserve (ob, room) < 0)
        return -1;
    if ((n = json_dumpb (s, ob->text + ob->len, room, JSON_ENCODE_ANY)) == 0
        || n > room) {
        errno = EINVAL;
        return -1;
    }
    ob->len += n;
    ob->text[ob->len] = '\0';
    return 0;
}

static void outbox_clear (struct outbox *ob)
{
    ob->len = BATCH_HEAD_ROOM;
    ob->count = 0;
    if (ob->text)
        ob->text[ob->len] = '\0';
}

static int outbox_init (struct outbox *ob)
{
    if (outbox_reserve (ob, BATCH_HEAD_ROOM) < 0)
        return -1;
    outbox_clear (ob);
    return 0;
}

/* Append one packet.  Its data is valid JSON text of an object; a raw
 * newline in it can only be white space between tokens, and becomes a
 * space so that a batch stays one line of the datastore's log.  On
 * failure the outbox is as it was.
 */
static int outbox_add (struct outbox *ob,
                       json_int_t id,
                       const struct packet *pk)
{
    size_t start = ob->len;

    if (ob->count > 0 && outbox_write (ob, ",", 1) < 0)
        goto error;
    if (outbox_printf (ob, "{\"id\":%" JSON_INTEGER_FORMAT, id) < 0)
        goto error;
    if (pk->producer) {
        if (outbox_write (ob, ",\"producer\":", 12) < 0)
            goto error;
        if (outbox_write_json (ob, pk->producer) < 0)
            goto error;
        if (outbox_printf (ob, ",\"seq\":%" JSON_INTEGER_FORMAT, pk->seq) < 0)
            goto error;
    }
    if (outbox_write (ob, ",\"data\":", 8) < 0)
        goto error;
    if (outbox_reserve (ob, pk->datalen + 1) < 0)
        goto error;
    for (size_t i = 0; i < pk->datalen; i++) {
        char c = pk->data[i];
        ob->text[ob->len++] = (c == '\n' || c == '\r') ? ' ' : c;
    }
    ob->text[ob->len++] = '}';
    ob->text[ob->len] = '\0';
    if (ob->count++ == 0)
        ob->first = id;
    ob->last = id;
    return 0;
error:
    ob->len = start;
    ob->text[ob->len] = '\0';
    errno = ENOMEM;
    return -1;
}

/* Send everything queued as one batch, unless too many are unacknowledged.
 */
static void outbox_flush (struct conduit *ctx)
{
    struct outbox *ob = &ctx->outbox;
    char head[BATCH_HEAD_ROOM + 1];
    char *text;
    int n;

    if (!ctx->attach || ob->count == 0)
        return;
    if (ctx->batches >= ctx->unacked_batches
        && (ob->count < FULL_BATCH_PACKETS
            || ctx->batches >= MAX_BATCHES_IN_FLIGHT))
        return;
    n = snprintf (head,
                  sizeof (head),
                  "{\"first\":%" JSON_INTEGER_FORMAT
                  ",\"last\":%" JSON_INTEGER_FORMAT
                  ",\"packets\":[",
                  ob->first,
                  ob->last);
    if (n < 0 || n > BATCH_HEAD_ROOM)
        goto error;
    if (outbox_write (ob, batch_tail, sizeof (batch_tail) - 1) < 0)
        goto error;
    text = ob->text + BATCH_HEAD_ROOM - n;
    memcpy (text, head, n);
    if (flux_respond (ctx->h, ctx->attach, text) < 0) {
        ob->len -= sizeof (batch_tail) - 1; // keep the packets for the next try
        ob->text[ob->len] = '\0';
        goto error;
    }
    ctx->batch_last[ctx->batches++] = ob->last;
    ctx->sent_upto = ob->last;
    outbox_clear (ob);
    return;
error:
    flux_log_error (ctx->h, "error sending a batch to the datastore");
}

static void respond_error (struct conduit *ctx,
                           const flux_msg_t *msg,
                           int errnum,
                           const char *errstr,
                           const char *topic)
{
    if (flux_respond_error (ctx->h, msg, errnum, errstr) < 0)
        flux_log_error (ctx->h, "error responding to %s", topic);
}

static struct held_put *held_put_create (const flux_msg_t *msg,
                                         json_int_t first,
                                         size_t count,
                                         size_t bytes,
                                         bool batch)
{
    struct held_put *p;

    if (!(p = malloc (sizeof (*p))))
        return NULL;
    p->next = NULL;
    p->msg = flux_msg_incref (msg);
    p->first = first;
    p->count = count;
    p->bytes = bytes;
    p->batch = batch;
    return p;
}

static void held_put_destroy (struct held_put *p)
{
    if (p) {
        int saved_errno = errno;
        flux_msg_decref (p->msg);
        free (p);
        errno = saved_errno;
    }
}

static json_int_t held_put_last (const struct held_put *p)
{
    return p->first + (json_int_t)p->count - 1;
}

static void held_append (struct conduit *ctx, struct held_put *p)
{
    if (ctx->tail)
        ctx->tail->next = p;
    else
        ctx->head = p;
    ctx->tail = p;
    ctx->held += p->count;
    ctx->held_bytes += p->bytes;
}

static struct held_put *held_pop (struct conduit *ctx)
{
    struct held_put *p = ctx->head;

    if (p) {
        if (!(ctx->head = p->next))
            ctx->tail = NULL;
        p->next = NULL;
        ctx->held -= p->count;
        ctx->held_bytes -= p->bytes;
    }
    return p;
}

/* Fail every held put and forget the queue: the datastore is gone.
 */
static void held_fail_all (struct conduit *ctx, const char *errstr)
{
    struct held_put *p;

    while ((p = held_pop (ctx))) {
        respond_error (ctx, p->msg, ECONNRESET, errstr, "conduit.put");
        held_put_destroy (p);
    }
    ctx->batches = 0;
    outbox_clear (&ctx->outbox);
}

static void datastore_detach (struct conduit *ctx, const char *why)
{
    if (!ctx->attach)
        return;
    flux_log (ctx->h,
              LOG_INFO,
              "datastore %" JSON_INTEGER_FORMAT " detached (%s)",
              ctx->datastore_jobid,
              why);
    held_fail_all (ctx,
                   "conduit: the datastore detached before storing this "
                   "packet; retry when a datastore is running");
    flux_msg_decref (ctx->attach);
    ctx->attach = NULL;
}

static const char *json_type_name (const json_t *o)
{
    switch (json_typeof (o)) {
        case JSON_ARRAY:
            return "an array";
        case JSON_STRING:
            return "a string";
        case JSON_INTEGER:
        case JSON_REAL:
            return "a number";
        case JSON_TRUE:
        case JSON_FALSE:
            return "a boolean";
        case JSON_NULL:
            return "null";
        default:
            return "an object";
    }
}

/* How many levels of objects and arrays 'o' nests (a scalar: 0).
 * jansson parses at most JSON_PARSER_MAX_DEPTH levels, which bounds
 * the recursion.
 */
static size_t json_depth (json_t *o)
{
    size_t deepest = 0;
    size_t index;
    const char *key;
    json_t *value;

    if (json_is_object (o)) {
        json_object_foreach (o, key, value) {
            size_t d = json_depth (value);
            if (d > deepest)
                deepest = d;
        }
        return deepest + 1;
    }
    if (json_is_array (o)) {
        json_array_foreach (o, index, value) {
            size_t d = json_depth (value);
            if (d > deepest)
                deepest = d;
        }
        return deepest + 1;
    }
    return 0;
}

/* Characters (Unicode code points) in a UTF-8 string.
 */
static size_t utf8_chars (const char *s, size_t len)
{
    size_t n = 0;

    for (size_t i = 0; i < len; i++) {
        if (((unsigned char)s[i] & 0xC0) != 0x80)
            n++;
    }
    return n;
}

/* The fields of a packet already checked by packet_decode().
 */
static void packet_get (json_t *o, struct packet *pk)
{
    json_t *data = json_object_get (o, "data");

    pk->data = json_string_value (data);
    pk->datalen = json_string_length (data);
    pk->producer = json_object_get (o, "producer");
    pk->seq = json_integer_value (json_object_get (o, "seq"));
}

/* Check one packet: the payload of a single put (index -1), or one
 * element of a batch put's "packets" (its index).
 */
static int packet_decode (struct conduit *ctx,
                          json_t *o,
                          long index,
                          struct packet *pk,
                          struct put_error *e)
{
    json_t *data = json_object_get (o, "data");
    json_t *producer = json_object_get (o, "producer");
    json_t *seq = json_object_get (o, "seq");
    json_t *obj;
    json_error_t jerror;
    size_t datalen;
    size_t depth;

    if (!data)
        return put_refuse (e,
                           EPROTO,
                           index,
                           "the %s lacks \"data\"",
                           index < 0 ? "payload" : "packet");
    if (!json_is_string (data))
        return put_refuse (e,
                           EPROTO,
                           index,
                           "\"data\" must be a string holding a JSON object, "
                           "not %s",
                           json_type_name (data));
    datalen = json_string_length (data);
    if (datalen > ctx->max_data)
        return put_refuse (e,
                           EMSGSIZE,
                           index,
                           "\"data\" is %zu bytes, over the limit of %zu bytes",
                           datalen,
                           ctx->max_data);
    if (seq && !(json_is_integer (seq) && json_integer_value (seq) >= 1)) {
        if (json_is_integer (seq))
            return put_refuse (e,
                               EPROTO,
                               index,
                               "\"seq\" must be an integer from 1, not %"
                               JSON_INTEGER_FORMAT,
                               json_integer_value (seq));
        return put_refuse (e,
                           EPROTO,
                           index,
                           "\"seq\" must be an integer from 1, not %s",
                           json_type_name (seq));
    }
    if (producer) {
        size_t chars;
        if (!json_is_string (producer))
            return put_refuse (e,
                               EPROTO,
                               index,
                               "\"producer\" must be a string, not %s",
                               json_type_name (producer));
        chars = utf8_chars (json_string_value (producer),
                            json_string_length (producer));
        if (chars == 0 || chars > max_producer_chars)
            return put_refuse (e,
                               EPROTO,
                               index,
                               "\"producer\" is %zu characters long; it must "
                               "be 1 to %zu",
                               chars,
                               max_producer_chars);
    }
    if ((producer != NULL) != (seq != NULL))
        return put_refuse (e,
                           EPROTO,
                           index,
                           "\"producer\" and \"seq\" go together: give both "
                           "or neither");
    if (!(obj = json_loadb (json_string_value (data),
                            datalen,
                            JSON_DECODE_ANY,
                            &jerror)))
        return put_refuse (e,
                           EPROTO,
                           index,
                           "\"data\" is not valid JSON: %s (at character %d)",
                           jerror.text,
                           jerror.position);
    if (!json_is_object (obj)) {
        put_refuse (e,
                    EPROTO,
                    index,
                    "\"data\" must hold a JSON object, not %s",
                    json_type_name (obj));
        json_decref (obj);
        return -1;
    }
    depth = json_depth (obj);
    json_decref (obj);
    if (depth > ctx->max_depth)
        return put_refuse (e,
                           EPROTO,
                           index,
                           "\"data\" is nested %zu levels deep, over the "
                           "limit of %zu",
                           depth,
                           ctx->max_depth);
    packet_get (o, pk);
    return 0;
}

/* Check every packet of a batch put; sum their data bytes.
 */
static int batch_decode (struct conduit *ctx,
                         json_t *packets,
                         size_t *bytes,
                         struct put_error *e)
{
    size_t count;
    size_t index;
    json_t *o;
    struct packet pk;

    if (!json_is_array (packets))
        return put_refuse (e,
                           EPROTO,
                           -1,
                           "\"packets\" must be an array, not %s",
                           json_type_name (packets));
    count = json_array_size (packets);
    if (count == 0 || count > max_batch_packets)
        return put_refuse (e,
                           EPROTO,
                           -1,
                           "\"packets\" holds %zu packets; a put carries 1 "
                           "to %zu",
                           count,
                           max_batch_packets);
    *bytes = 0;
    json_array_foreach (packets, index, o) {
        if (!json_is_object (o))
            return put_refuse (e,
                               EPROTO,
                               (long)index,
                               "must be a JSON object, not %s",
                               json_type_name (o));
        if (packet_decode (ctx, o, (long)index, &pk, e) < 0)
            return -1;
        *bytes += pk.datalen;
    }
    return 0;
}

/* Refuse a put that would pass the backlog: EAGAIN while it could fit
 * later, EMSGSIZE if it never can.
 */
static int backlog_check (struct conduit *ctx,
                          size_t count,
                          size_t bytes,
                          struct put_error *e)
{
    if (count > ctx->backlog_packets)
        return put_refuse (e,
                           EMSGSIZE,
                           -1,
                           "%zu packets can never fit the backlog of %zu "
                           "packets (backlog-packets=); send fewer per put",
                           count,
                           ctx->backlog_packets);
    if (bytes > ctx->backlog_bytes)
        return put_refuse (e,
                           EMSGSIZE,
                           -1,
                           "%zu bytes of data can never fit the backlog of "
                           "%zu bytes (backlog-bytes=); send less per put",
                           bytes,
                           ctx->backlog_bytes);
    if (ctx->held + count > ctx->backlog_packets) {
        snprintf (e->text,
                  sizeof (e->text),
                  "conduit: backlog full: %zu packets are waiting for the "
                  "datastore, and %zu more would pass the limit of %zu "
                  "packets; retry later",
                  ctx->held,
                  count,
                  ctx->backlog_packets);
        errno = EAGAIN;
        return -1;
    }
    if (ctx->held_bytes + bytes > ctx->backlog_bytes) {
        snprintf (e->text,
                  sizeof (e->text),
                  "conduit: backlog full: %zu bytes are waiting for the "
                  "datastore, and %zu more would pass the limit of %zu "
                  "bytes; retry later",
                  ctx->held_bytes,
                  bytes,
                  ctx->backlog_bytes);
        errno = EAGAIN;
        return -1;
    }
    return 0;
}

/* Queue a checked put's packets, all or none.
 */
static int outbox_add_put (struct outbox *ob,
                           json_int_t first,
                           json_t *packets,
                           const struct packet *single)
{
    struct outbox saved = *ob;
    size_t index;
    json_t *o;
    struct packet pk;

    if (!packets)
        return outbox_add (ob, first, single);
    json_array_foreach (packets, index, o) {
        packet_get (o, &pk);
        if (outbox_add (ob, first + (json_int_t)index, &pk) < 0) {
            ob->len = saved.len;
            ob->text[ob->len] = '\0';
            ob->count = saved.count;
            ob->first = saved.first;
            ob->last = saved.last;
            return -1;
        }
    }
    return 0;
}

/* conduit.put: queue one packet, or a batch of them, for the datastore.
 */
static void put_cb (flux_t *h,
                    flux_msg_handler_t *mh,
                    const flux_msg_t *msg,
                    void *arg)
{
    struct conduit *ctx = arg;
    struct put_error e;
    json_t *payload;
    json_t *packets;
    struct packet single;
    size_t count = 1;
    size_t bytes = 0;
    struct held_put *p;

    if (flux_request_unpack (msg, NULL, "o", &payload) < 0
        || !json_is_object (payload)) {
        put_refuse (&e,
                    EPROTO,
                    -1,
                    "the payload must be a JSON object: {\"data\", "
                    "\"producer\"?, \"seq\"?} or {\"packets\": [...]}");
        goto error;
    }
    if ((packets = json_object_get (payload, "packets"))) {
        if (json_array_size (packets) > 0)
            count = json_array_size (packets); // counted as rejected if bad
        if (json_object_get (payload, "data")) {
            put_refuse (&e,
                        EPROTO,
                        -1,
                        "give \"data\" or \"packets\", not both");
            goto error;
        }
        if (batch_decode (ctx, packets, &bytes, &e) < 0)
            goto error;
    }
    else {
        if (packet_decode (ctx, payload, -1, &single, &e) < 0)
            goto error;
        bytes = single.datalen;
    }
    if (!ctx->attach) {
        snprintf (e.text,
                  sizeof (e.text),
                  "conduit: no datastore is attached on rank %u",
                  (unsigned int)ctx->rank);
        errno = ENOTCONN;
        goto error;
    }
    if (backlog_check (ctx, count, bytes, &e) < 0)
        goto error;
    p = held_put_create (msg, ctx->next_id, count, bytes, packets != NULL);
    if (!p
        || outbox_add_put (&ctx->outbox, ctx->next_id, packets, &single) < 0) {
        held_put_destroy (p);
        snprintf (e.text, sizeof (e.text), "conduit: out of memory");
        errno = ENOMEM;
        goto error;
    }
    held_append (ctx, p);
    ctx->next_id += count;
    ctx->received += count;
    outbox_flush (ctx);
    return;
error:
    ctx->rejected += count;
    respond_error (ctx, msg, errno, e.text, "conduit.put");
}

/* conduit.attach: the datastore opens the stream that packets travel on.
 * The first packet is the module's own {"test": 101}, with id 0.
 */
static void attach_cb (flux_t *h,
                       flux_msg_handler_t *mh,
                       const flux_msg_t *msg,
                       void *arg)
{
    struct conduit *ctx = arg;
    json_int_t jobid = 0;
    json_int_t first_id = 1;
    flux_error_t error;
    static const char test[] = "{\"test\":101}";
    struct packet pk = { .data = test, .datalen = sizeof (test) - 1 };

    if (flux_request_unpack (msg,
                             NULL,
                             "{s?I s?I}",
                             "jobid", &jobid,
                             "first_id", &first_id) < 0
        || first_id < 1) {
        errprintf (&error, "conduit.attach: bad payload");
        goto error;
    }
    if (!flux_msg_is_streaming (msg)) {
        errprintf (&error, "conduit.attach must be a streaming request");
        errno = EPROTO;
        goto error;
    }
    if (ctx->attach) {
        errprintf (&error,
                   "conduit: rank %u already serves datastore %"
                   JSON_INTEGER_FORMAT,
                   (unsigned int)ctx->rank,
                   ctx->datastore_jobid);
        errno = EBUSY;
        goto error;
    }
    ctx->attach = flux_msg_incref (msg);
    ctx->datastore_jobid = jobid;
    if (first_id > ctx->next_id)
        ctx->next_id = first_id; // ids go on from the stream's log
    flux_log (h,
              LOG_INFO,
              "datastore %" JSON_INTEGER_FORMAT " attached",
              jobid);
    if (outbox_add (&ctx->outbox, 0, &pk) < 0)
        flux_log_error (h, "error queueing the test packet");
    outbox_flush (ctx);
    return;
error:
    respond_error (ctx, msg, errno, error.text, "conduit.attach");
}

/* Check an acknowledgement before acting on any of it.
 */
static int ack_check (struct conduit *ctx,
                      json_int_t upto,
                      json_t *dups,
                      json_t *refused,
                      flux_error_t *error)
{
    size_t index;
    size_t i;
    json_t *o;
    json_int_t first;
    json_int_t last;
    const char *text;

    if (upto > ctx->sent_upto) {
        errprintf (error,
                   "conduit.ack: \"upto\" %" JSON_INTEGER_FORMAT
                   " acknowledges packets never sent (the last sent is %"
                   JSON_INTEGER_FORMAT ")",
                   upto,
                   ctx->sent_upto);
        goto inval;
    }
    for (i = 0; i < ctx->batches && ctx->batch_last[i] != upto; i++)
        ;
    if (i == ctx->batches) {
        errprintf (error,
                   "conduit.ack: \"upto\" %" JSON_INTEGER_FORMAT
                   " is not the last id of an unacknowledged batch",
                   upto);
        goto inval;
    }
    if (dups) {
        if (!json_is_array (dups)) {
            errprintf (error,
                       "conduit.ack: \"duplicates\" must be an array of ids");
            goto inval;
        }
        json_array_foreach (dups, index, o) {
            if (!json_is_integer (o)) {
                errprintf (error,
                           "conduit.ack: \"duplicates\" must be an array of "
                           "ids, not hold %s",
                           json_type_name (o));
                goto inval;
            }
        }
    }
    if (refused) {
        if (!json_is_array (refused)) {
            errprintf (error,
                       "conduit.ack: \"refused\" must be an array of "
                       "{\"first\", \"last\", \"error\"}");
            goto inval;
        }
        json_array_foreach (refused, index, o) {
            if (json_unpack (o,
                             "{s:I s:I s:s}",
                             "first", &first,
                             "last", &last,
                             "error", &text) < 0
                || first > last
                || last > upto) {
                errprintf (error,
                           "conduit.ack: \"refused\"[%zu] must be "
                           "{\"first\", \"last\", \"error\"} with first <= "
                           "last <= upto",
                           index);
                goto inval;
            }
        }
    }
    return 0;
inval:
    errno = EPROTO;
    return -1;
}

/* Whether the datastore acknowledged packet 'id' as a duplicate.  Ids
 * are asked in increasing order; *d is where the search resumes.
 */
static bool ack_is_duplicate (json_t *dups, size_t *d, json_int_t id)
{
    json_int_t dup = -1;

    while (*d < json_array_size (dups)
           && (dup = json_integer_value (json_array_get (dups, *d))) < id)
        (*d)++;
    return dup == id;
}

/* The datastore's reason for refusing any packet of 'p', or NULL.
 */
static const char *ack_refusal (json_t *refused, const struct held_put *p)
{
    size_t index;
    json_t *o;
    json_int_t first;
    json_int_t last;
    const char *text;

    json_array_foreach (refused, index, o) {
        if (json_unpack (o,
                         "{s:I s:I s:s}",
                         "first", &first,
                         "last", &last,
                         "error", &text) == 0
            && first <= held_put_last (p)
            && last >= p->first)
            return text;
    }
    return NULL;
}

/* Answer an acknowledged put with each packet's id and duplicate flag.
 * The answer is written as text, as the batches are: a batch put of
 * thousands of packets would otherwise cost a jansson object for each.
 */
static void respond_stored (struct conduit *ctx,
                            const struct held_put *p,
                            json_t *dups,
                            size_t *d)
{
    // {"id":<20 digits>,"duplicate":false}, and a comma
    size_t size = p->count * (sizeof (answer_item) + 20) + sizeof (answer_head) + 3;
    char *text;
    size_t len = 0;
    bool dup = false;

    if (!(text = malloc (size))) {
        respond_error (ctx,
                       p->msg,
                       ENOMEM,
                       "conduit: out of memory answering this put; its packets "
                       "are stored",
                       "conduit.put");
        return;
    }
    if (p->batch)
        len += snprintf (text, size, "%s", answer_head);
    for (size_t i = 0; i < p->count; i++) {
        json_int_t id = p->first + (json_int_t)i;
        if ((dup = ack_is_duplicate (dups, d, id)))
            ctx->duplicates++;
        else
            ctx->stored++;
        len += snprintf (text + len,
                         size - len,
                         answer_item,
                         i > 0 ? "," : "",
                         id,
                         dup ? "true" : "false");
    }
    if (p->batch)
        len += snprintf (text + len, size - len, "]}");
    if (flux_respond (ctx->h, p->msg, text) < 0)
        flux_log_error (ctx->h, "error responding to conduit.put");
    free (text);
}

/* conduit.ack: the datastore is done with every packet up to "upto", the
 * last id of a batch.  It stored them, except those in the ranges of
 * "refused" (optional), and had already stored those in "duplicates".
 * Both are in id order.  The datastore sends this without asking for a
 * response, so a refusal is logged too.
 */
static void ack_cb (flux_t *h,
                    flux_msg_handler_t *mh,
                    const flux_msg_t *msg,
                    void *arg)
{
    struct conduit *ctx = arg;
    json_int_t upto;
    json_t *dups = NULL;
    json_t *refused = NULL;
    size_t d = 0;
    struct held_put *p;
    const char *why;
    flux_error_t error;

    if (flux_request_unpack (msg,
                             NULL,
                             "{s:I s?o s?o}",
                             "upto", &upto,
                             "duplicates", &dups,
                             "refused", &refused) < 0) {
        errprintf (&error,
                   "conduit.ack: the payload must be {\"upto\": id, "
                   "\"duplicates\"?: [ids], \"refused\"?: [ranges]}");
        errno = EPROTO;
        goto error;
    }
    if (!ctx->attach || !same_sender (msg, ctx->attach)) {
        errprintf (&error,
                   "conduit.ack: only the attached datastore may acknowledge");
        errno = EPERM;
        goto error;
    }
    if (ack_check (ctx, upto, dups, refused, &error) < 0)
        goto error;
    // the next batch leaves first, so that the datastore has it sooner
    while (ctx->batches > 0 && ctx->batch_last[0] <= upto) {
        memmove (ctx->batch_last,
                 ctx->batch_last + 1,
                 sizeof (ctx->batch_last[0]) * --ctx->batches);
    }
    outbox_flush (ctx);
    while (ctx->head && held_put_last (ctx->head) <= upto) {
        p = held_pop (ctx);
        if ((why = ack_refusal (refused, p))) {
            char errstr[PUT_ERRSTR_SIZE];
            snprintf (errstr,
                      sizeof (errstr),
                      "conduit: the datastore could not store this packet: %s",
                      why);
            ctx->rejected += p->count;
            respond_error (ctx, p->msg, EPROTO, errstr, "conduit.put");
        }
        else
            respond_stored (ctx, p, dups, &d);
        held_put_destroy (p);
    }
    if (flux_respond (h, msg, NULL) < 0)
        flux_log_error (h, "error responding to conduit.ack");
    return;
error:
    flux_log (h, LOG_ERR, "%s", error.text);
    respond_error (ctx, msg, errno, error.text, "conduit.ack");
}

/* <name>.stats-get: the module's counters and limits.
 */
static void stats_cb (flux_t *h,
                      flux_msg_handler_t *mh,
                      const flux_msg_t *msg,
                      void *arg)
{
    struct conduit *ctx = arg;

    if (flux_respond_pack (h,
                           msg,
                           "{s:s s:i s:b s:I s:I s:I s:I s:I s:I s:I s:I s:I"
                           " s:I s:I s:I s:I s:I s:s}",
                           "name", ctx->name,
                           "rank", (int)ctx->rank,
                           "attached", ctx->attach ? 1 : 0,
                           "datastore", ctx->datastore_jobid,
                           "held", (json_int_t)ctx->held,
                           "held_bytes", (json_int_t)ctx->held_bytes,
                           "queued", (json_int_t)ctx->outbox.count,
                           "unacked_batches", (json_int_t)ctx->batches,
                           "received", ctx->received,
                           "stored", ctx->stored,
                           "duplicates", ctx->duplicates,
                           "rejected", ctx->rejected,
                           "last_id", ctx->next_id - 1,
                           "max_data", (json_int_t)ctx->max_data,
                           "max_depth", (json_int_t)ctx->max_depth,
                           "backlog_packets", (json_int_t)ctx->backlog_packets,
                           "backlog_bytes", (json_int_t)ctx->backlog_bytes,
                           "flux_version", FLUX_CORE_VERSION_STRING) < 0)
        flux_log_error (h, "error responding to %s", ctx->topics.stats_get);
}

/* conduit.disconnect: a client went away.  If it was the datastore, the
 * conduit closes.
 */
static void disconnect_cb (flux_t *h,
                           flux_msg_handler_t *mh,
                           const flux_msg_t *msg,
                           void *arg)
{
    struct conduit *ctx = arg;

    if (ctx->attach && flux_disconnect_match (msg, ctx->attach)) {
        datastore_detach (ctx, "disconnected");
        flux_reactor_stop (flux_get_reactor (h));
    }
}

/* Parse VALUE of argument ARG as an integer from min to max.
 */
static int parse_size (const char *arg,
                       const char *value,
                       size_t min,
                       size_t max,
                       size_t *result,
                       flux_error_t *error)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull (value, &end, 10);
    if (errno != 0
        || end == value
        || *end != '\0'
        || *value == '-'
        || v < min
        || v > max) {
        if (max == SIZE_MAX)
            errprintf (error, "%s: expected an integer from %zu", arg, min);
        else
            errprintf (error,
                       "%s: expected an integer from %zu to %zu",
                       arg,
                       min,
                       max);
        errno = EINVAL;
        return -1;
    }
    *result = (size_t)v;
    return 0;
}

static bool strstarts (const char *s, const char *prefix)
{
    return strncmp (s, prefix, strlen (prefix)) == 0;
}

static int conduit_parse_args (struct conduit *ctx,
                               int argc,
                               char **argv,
                               flux_error_t *error)
{
    for (int i = 0; i < argc; i++) {
        const char *value = strchr (argv[i], '=');
        int rc;

        value = value ? value + 1 : "";
        if (strstarts (argv[i], "max-data="))
            rc = parse_size (argv[i],
                             value,
                             1,
                             SIZE_MAX,
                             &ctx->max_data,
                             error);
        else if (strstarts (argv[i], "max-depth="))
            rc = parse_size (argv[i],
                             value,
                             1,
                             max_max_depth,
                             &ctx->max_depth,
                             error);
        else if (strstarts (argv[i], "backlog-packets=")
                 || strstarts (argv[i], "backlog=")) // deprecated name
            rc = parse_size (argv[i],
                             value,
                             1,
                             SIZE_MAX,
                             &ctx->backlog_packets,
                             error);
        else if (strstarts (argv[i], "backlog-bytes="))
            rc = parse_size (argv[i],
                             value,
                             1,
                             SIZE_MAX,
                             &ctx->backlog_bytes,
                             error);
        else if (strstarts (argv[i], "unacked-batches="))
            rc = parse_size (argv[i],
                             value,
                             1,
                             MAX_UNACKED_BATCHES,
                             &ctx->unacked_batches,
                             error);
        else {
            errprintf (error,
                       "%s: unknown argument; the conduit takes "
                       "max-data=BYTES, max-depth=1..%zu, backlog-packets=N, "
                       "backlog-bytes=BYTES, unacked-batches=1..%d",
                       argv[i],
                       max_max_depth,
                       MAX_UNACKED_BATCHES);
            errno = EINVAL;
            rc = -1;
        }
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* Refuse a broker of another flux-core major or minor version than the
 * one this module was built against (patch levels may differ).
 */
static int check_broker_version (flux_t *h, flux_error_t *error)
{
    const char *version;
    int major;
    int minor;

    if (!(version = flux_attr_get (h, "version")))
        return errprintf (error,
                          "cannot read the broker's version attribute: %s",
                          strerror (errno));
    if (sscanf (version, "%d.%d", &major, &minor) != 2
        || major != FLUX_CORE_VERSION_MAJOR
        || minor != FLUX_CORE_VERSION_MINOR) {
        errprintf (error,
                   "conduit.so was built for flux-core %s but the broker "
                   "runs flux-core %s; rebuild it (make module)",
                   FLUX_CORE_VERSION_STRING,
                   version);
        errno = EINVAL;
        return -1;
    }
    return 0;
}

/* The handler table, with its topics made from the module's name.
 */
static int handlers_add (struct conduit *ctx)
{
    struct topics *t = &ctx->topics;
    const struct {
        char *topic;
        const char *method;
    } names[] = {
        { t->put, "put" },
        { t->attach, "attach" },
        { t->ack, "ack" },
        { t->stats_get, "stats-get" },
        { t->disconnect, "disconnect" },
    };
    for (size_t i = 0; i < sizeof (names) / sizeof (names[0]); i++) {
        int n = snprintf (names[i].topic,
                          TOPIC_SIZE,
                          "%s.%s",
                          ctx->name,
                          names[i].method);
        if (n < 0 || n >= TOPIC_SIZE) {
            errno = ENAMETOOLONG;
            return -1;
        }
    }
    const struct flux_msg_handler_spec htab[] = {
        { .typemask     = FLUX_MSGTYPE_REQUEST,
          .topic_glob   = t->put,
          .cb           = put_cb,
          .rolemask     = FLUX_ROLE_OWNER
        },
        { .typemask     = FLUX_MSGTYPE_REQUEST,
          .topic_glob   = t->attach,
          .cb           = attach_cb,
          .rolemask     = FLUX_ROLE_OWNER
        },
        { .typemask     = FLUX_MSGTYPE_REQUEST,
          .topic_glob   = t->ack,
          .cb           = ack_cb,
          .rolemask     = FLUX_ROLE_OWNER
        },
        // added after the broker's default stats-get, so it matches first
        { .typemask     = FLUX_MSGTYPE_REQUEST,
          .topic_glob   = t->stats_get,
          .cb           = stats_cb,
          .rolemask     = FLUX_ROLE_OWNER
        },
        { .typemask     = FLUX_MSGTYPE_REQUEST,
          .topic_glob   = t->disconnect,
          .cb           = disconnect_cb,
          .rolemask     = FLUX_ROLE_OWNER
        },
        FLUX_MSGHANDLER_TABLE_END,
    };
    return flux_msg_handler_addvec (ctx->h, htab, ctx, &ctx->handlers);
}

static void conduit_destroy (struct conduit *ctx)
{
    if (ctx) {
        int saved_errno = errno;
        held_fail_all (ctx,
                       "conduit: the module was unloaded before the "
                       "datastore stored this packet");
        if (ctx->attach) {
            // end of stream: the datastore sees ENODATA
            if (flux_respond_error (ctx->h, ctx->attach, ENODATA, NULL) < 0)
                flux_log_error (ctx->h, "error ending the attach stream");
            flux_msg_decref (ctx->attach);
        }
        flux_msg_handler_delvec (ctx->handlers);
        free (ctx->outbox.text);
        free (ctx);
        errno = saved_errno;
    }
}

static struct conduit *conduit_create (flux_t *h)
{
    struct conduit *ctx;

    if (!(ctx = calloc (1, sizeof (*ctx))))
        return NULL;
    ctx->h = h;
    ctx->unacked_batches = default_unacked_batches;
    ctx->max_data = default_max_data;
    ctx->max_depth = default_max_depth;
    ctx->backlog_packets = default_backlog_packets;
    ctx->backlog_bytes = default_backlog_bytes;
    ctx->next_id = 1;
    ctx->sent_upto = -1;
    if (!(ctx->name = flux_aux_get (h, "flux::name")))
        ctx->name = "conduit";
    if (outbox_init (&ctx->outbox) < 0
        || flux_get_rank (h, &ctx->rank) < 0
        || handlers_add (ctx) < 0)
        goto error;
    return ctx;
error:
    conduit_destroy (ctx);
    return NULL;
}

int mod_main (flux_t *h, int argc, char **argv)
{
    struct conduit *ctx;
    flux_error_t error;

    if (!(ctx = conduit_create (h))) {
        flux_log_error (h, "error initializing the conduit");
        return -1;
    }
    if (check_broker_version (h, &error) < 0
        || conduit_parse_args (ctx, argc, argv, &error) < 0) {
        flux_log (h, LOG_ERR, "%s", error.text);
        goto error;
    }
    if (flux_reactor_run (flux_get_reactor (h), 0) < 0) {
        flux_log_error (h, "flux_reactor_run");
        goto error;
    }
    conduit_destroy (ctx);
    return 0;
error:
    conduit_destroy (ctx);
    return -1;
}

/*
 * vi:tabstop=4 shiftwidth=4 expandtab
 */
