/* conduit.c - broker module carrying JSON packets from compute jobs
 * to the one datastore job attached to it
 *
 * A datastore job loads this module on its own broker rank and holds a
 * streaming conduit.attach request.  Compute jobs send conduit.put with
 * payload {"data":"<a JSON object, as a string>"}; the module validates
 * the packet and forwards it to the datastore in a batch, as a response
 * on the attach stream.  The datastore stores the batch and answers with
 * conduit.ack; only then does the module respond to the puts, so an
 * acknowledged put is a stored packet.
 *
 * Batching: at most 'window' batches are outstanding to the datastore.
 * Puts arriving meanwhile queue and leave together in the next batch, so
 * batches grow with load while an idle conduit forwards each packet at
 * once.  A batch is JSON text built by appending each packet's validated
 * data as it came, so no packet is encoded twice.
 *
 * Nothing here blocks the broker: a slow datastore only makes the queue
 * longer, up to 'backlog' held puts or 'backlog_bytes' of their data,
 * after which puts fail with EAGAIN.
 *
 * Lifetime: the module serves one datastore.  When that datastore
 * disconnects (it exited, was cancelled or was killed), held puts fail
 * with ECONNRESET and the module exits, so the broker unloads it and
 * nothing is left in the way of the next datastore.
 *
 * Only the instance owner may use the conduit (the handlers' default).
 */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <flux/core.h>
#include <jansson.h>

#define MAX_WINDOW 8

/* Read by the datastore (conduit/broker_module.py) to refuse a module
 * built for another flux-core than the broker runs. */
__attribute__((used)) static const char conduit_version_mark[] =
    "conduit-flux-core-version=" FLUX_CORE_VERSION_STRING;

static const size_t default_window = 4;
static const size_t default_max_data = 65536;
static const size_t default_backlog = 65536;
static const size_t default_backlog_bytes = 64 * 1024 * 1024;

/* The next batch for the datastore, as the text of its response payload:
 * {"packets":[{"id":N,"producer":"P","seq":S,"data":{...}},...]}
 */
struct outbox {
    char *text;
    size_t len;
    size_t size;
    size_t count;               // packets in it
    json_int_t last;            // id of the last one
};

static const char batch_head[] = "{\"packets\":[";
static const char batch_tail[] = "]}";

/* A put waiting for the datastore's acknowledgement.
 */
struct held_put {
    json_int_t id;
    size_t bytes;
    const flux_msg_t *msg;
    struct held_put *next;
};

struct conduit {
    flux_t *h;
    uint32_t rank;
    flux_msg_handler_t **handlers;
    size_t window;              // most batches sent and not yet acknowledged
    size_t max_data;            // largest accepted "data" string, in bytes
    size_t backlog;             // most puts held at once
    size_t backlog_bytes;       // most data held at once, in bytes
    const flux_msg_t *attach;   // the datastore's streaming request, or NULL
    json_int_t datastore_jobid; // as the datastore declared it (0: not a job)
    json_int_t next_id;         // id of the next put
    struct outbox outbox;       // packets not yet sent to the datastore
    struct held_put *head;      // held puts, in id order
    struct held_put *tail;
    size_t held;
    size_t held_bytes;
    json_int_t batch_last[MAX_WINDOW]; // last id of each unacked batch
    size_t batches;
    json_int_t sent_upto;       // highest id sent to the datastore
    json_int_t received;
    json_int_t stored;
    json_int_t duplicates;
    json_int_t rejected;
};

static bool same_sender (const flux_msg_t *a, const flux_msg_t *b)
{
    const char *sa = flux_msg_route_first (a);
    const char *sb = flux_msg_route_first (b);

    return sa && sb && strcmp (sa, sb) == 0;
}

static int outbox_reserve (struct outbox *ob, size_t more)
{
    if (ob->len + more + 1 > ob->size) {
        size_t size = ob->size ? ob->size : 4096;
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

static void outbox_clear (struct outbox *ob)
{
    ob->len = 0;
    ob->count = 0;
    (void)outbox_write (ob, batch_head, sizeof (batch_head) - 1);
}

/* Append one packet.  'producer' is already JSON (a quoted string) or
 * NULL.  'data' is valid JSON text of an object; a raw newline in it can
 * only be white space between tokens, and becomes a space so that a batch
 * stays one line of the datastore's log.
 */
static int outbox_add (struct outbox *ob,
                       json_int_t id,
                       const char *producer,
                       json_int_t seq,
                       const char *data,
                       size_t datalen)
{
    char head[128];
    size_t start = ob->len;
    int n;

    n = snprintf (head,
                  sizeof (head),
                  "%s{\"id\":%" JSON_INTEGER_FORMAT,
                  ob->count ? "," : "",
                  id);
    if (outbox_write (ob, head, n) < 0
        || (producer
            && (outbox_write (ob, ",\"producer\":", 12) < 0
                || outbox_write (ob, producer, strlen (producer)) < 0
                || (n = snprintf (head,
                                  sizeof (head),
                                  ",\"seq\":%" JSON_INTEGER_FORMAT,
                                  seq)) < 0
                || outbox_write (ob, head, n) < 0))
        || outbox_write (ob, ",\"data\":", 8) < 0
        || outbox_reserve (ob, datalen + 1) < 0) {
        ob->len = start;
        errno = ENOMEM;
        return -1;
    }
    for (size_t i = 0; i < datalen; i++) {
        char c = data[i];
        ob->text[ob->len++] = (c == '\n' || c == '\r') ? ' ' : c;
    }
    ob->text[ob->len++] = '}';
    ob->text[ob->len] = '\0';
    ob->count++;
    ob->last = id;
    return 0;
}

/* Send everything queued as one batch, if the window allows it.
 */
static void outbox_flush (struct conduit *ctx)
{
    struct outbox *ob = &ctx->outbox;
    size_t len = ob->len;

    if (!ctx->attach || ob->count == 0 || ctx->batches >= ctx->window)
        return;
    if (outbox_write (ob, batch_tail, sizeof (batch_tail) - 1) < 0
        || flux_respond (ctx->h, ctx->attach, ob->text) < 0) {
        flux_log_error (ctx->h, "error sending a batch to the datastore");
        ob->len = len; // keep the packets for the next try
        ob->text[len] = '\0';
        return;
    }
    ctx->batch_last[ctx->batches++] = ob->last;
    ctx->sent_upto = ob->last;
    outbox_clear (ob);
}

static void respond_put (struct conduit *ctx,
                         const flux_msg_t *msg,
                         json_int_t id,
                         bool duplicate)
{
    if (flux_respond_pack (ctx->h,
                           msg,
                           "{s:I s:b}",
                           "id", id,
                           "duplicate", duplicate) < 0)
        flux_log_error (ctx->h, "error responding to conduit.put");
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

/* Fail every held put and forget the queue: the datastore is gone.
 */
static void held_fail_all (struct conduit *ctx, const char *errstr)
{
    while (ctx->head) {
        struct held_put *p = ctx->head;
        ctx->head = p->next;
        respond_error (ctx, p->msg, ECONNRESET, errstr, "conduit.put");
        flux_msg_decref (p->msg);
        free (p);
    }
    ctx->tail = NULL;
    ctx->held = 0;
    ctx->held_bytes = 0;
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

/* The validated parts of a put: its data text and, if numbered, the
 * producer (as JSON text, to be freed) and seq.
 */
struct put {
    const char *data;
    size_t datalen;
    char *producer;
    json_int_t seq;
};

/* Check a put's payload.  On failure, errstr names what is wrong and
 * errno is set.
 */
static int put_decode (struct conduit *ctx,
                       const flux_msg_t *msg,
                       struct put *put,
                       char *errstr,
                       size_t errlen)
{
    json_t *data = NULL;
    json_t *producer = NULL;
    json_int_t seq = 0;
    json_t *obj;
    json_error_t jerror;

    if (flux_request_unpack (msg,
                             NULL,
                             "{s?o s?o s?I}",
                             "data", &data,
                             "producer", &producer,
                             "seq", &seq) < 0) {
        snprintf (errstr,
                  errlen,
                  "conduit.put: the payload must be a JSON object with "
                  "\"data\" (string), optional \"producer\" (string) and "
                  "\"seq\" (integer)");
        goto inval;
    }
    if (!data) {
        snprintf (errstr, errlen, "conduit.put: the payload lacks \"data\"");
        goto inval;
    }
    if (!json_is_string (data)) {
        snprintf (errstr,
                  errlen,
                  "conduit.put: \"data\" must be a string holding a JSON "
                  "object, not %s",
                  json_type_name (data));
        goto inval;
    }
    put->data = json_string_value (data);
    put->datalen = json_string_length (data);
    if (put->datalen > ctx->max_data) {
        snprintf (errstr,
                  errlen,
                  "conduit.put: \"data\" is %zu bytes, over the limit of "
                  "%zu bytes",
                  put->datalen,
                  ctx->max_data);
        errno = EMSGSIZE;
        return -1;
    }
    if ((producer != NULL) != (seq != 0)
        || seq < 0
        || (producer
            && (!json_is_string (producer)
                || json_string_length (producer) == 0
                || json_string_length (producer) > 256))) {
        snprintf (errstr,
                  errlen,
                  "conduit.put: \"producer\" (a string of 1 to 256 "
                  "characters) and \"seq\" (an integer from 1) go together");
        goto inval;
    }
    if (!(obj = json_loadb (put->data, put->datalen, JSON_DECODE_ANY, &jerror))) {
        snprintf (errstr,
                  errlen,
                  "conduit.put: \"data\" is not valid JSON: %s "
                  "(at character %d)",
                  jerror.text,
                  jerror.position);
        goto inval;
    }
    if (!json_is_object (obj)) {
        snprintf (errstr,
                  errlen,
                  "conduit.put: \"data\" must hold a JSON object, not %s",
                  json_type_name (obj));
        json_decref (obj);
        goto inval;
    }
    json_decref (obj);
    put->seq = seq;
    put->producer = NULL;
    if (producer && !(put->producer = json_dumps (producer, JSON_ENCODE_ANY))) {
        snprintf (errstr, errlen, "conduit.put: out of memory");
        errno = ENOMEM;
        return -1;
    }
    return 0;
inval:
    errno = EPROTO;
    return -1;
}

static void put_cb (flux_t *h,
                    flux_msg_handler_t *mh,
                    const flux_msg_t *msg,
                    void *arg)
{
    struct conduit *ctx = arg;
    char errstr[256];
    struct put put;
    struct held_put *p;

    if (put_decode (ctx, msg, &put, errstr, sizeof (errstr)) < 0)
        goto error;
    if (!ctx->attach) {
        snprintf (errstr,
                  sizeof (errstr),
                  "conduit: no datastore is attached on rank %u",
                  (unsigned int)ctx->rank);
        errno = ENOTCONN;
        goto error_free;
    }
    if (ctx->held >= ctx->backlog
        || ctx->held_bytes + put.datalen > ctx->backlog_bytes) {
        snprintf (errstr,
                  sizeof (errstr),
                  "conduit: %zu packets (%zu bytes) are already waiting for "
                  "the datastore (backlog); retry later",
                  ctx->held,
                  ctx->held_bytes);
        errno = EAGAIN;
        goto error_free;
    }
    if (!(p = calloc (1, sizeof (*p)))
        || outbox_add (&ctx->outbox,
                       ctx->next_id,
                       put.producer,
                       put.seq,
                       put.data,
                       put.datalen) < 0) {
        free (p);
        snprintf (errstr, sizeof (errstr), "conduit: out of memory");
        errno = ENOMEM;
        goto error_free;
    }
    free (put.producer);
    p->id = ctx->next_id++;
    p->bytes = put.datalen;
    p->msg = flux_msg_incref (msg);
    if (ctx->tail)
        ctx->tail->next = p;
    else
        ctx->head = p;
    ctx->tail = p;
    ctx->held++;
    ctx->held_bytes += p->bytes;
    ctx->received++;
    outbox_flush (ctx);
    return;
error_free:
    free (put.producer);
error:
    ctx->rejected++;
    respond_error (ctx, msg, errno, errstr, "conduit.put");
}

/* The datastore opens the stream that packets travel on.
 * The first packet is the module's own {"test": 101}, with id 0.
 */
static void attach_cb (flux_t *h,
                       flux_msg_handler_t *mh,
                       const flux_msg_t *msg,
                       void *arg)
{
    struct conduit *ctx = arg;
    json_int_t jobid = 0;
    char errstr[256];
    static const char test[] = "{\"test\":101}";

    if (flux_request_unpack (msg, NULL, "{s?I}", "jobid", &jobid) < 0) {
        snprintf (errstr, sizeof (errstr), "conduit.attach: bad payload");
        goto error;
    }
    if (!flux_msg_is_streaming (msg)) {
        snprintf (errstr,
                  sizeof (errstr),
                  "conduit.attach must be a streaming request");
        errno = EPROTO;
        goto error;
    }
    if (ctx->attach) {
        snprintf (errstr,
                  sizeof (errstr),
                  "conduit: rank %u already serves datastore %"
                  JSON_INTEGER_FORMAT,
                  (unsigned int)ctx->rank,
                  ctx->datastore_jobid);
        errno = EBUSY;
        goto error;
    }
    ctx->attach = flux_msg_incref (msg);
    ctx->datastore_jobid = jobid;
    flux_log (h,
              LOG_INFO,
              "datastore %" JSON_INTEGER_FORMAT " attached",
              jobid);
    if (outbox_add (&ctx->outbox, 0, NULL, 0, test, sizeof (test) - 1) < 0)
        flux_log_error (h, "error queueing the test packet");
    outbox_flush (ctx);
    return;
error:
    respond_error (ctx, msg, errno, errstr, "conduit.attach");
}

/* The datastore stored every packet up to 'upto'; 'duplicates' lists
 * those it already had.  Both are in id order.
 */
static void ack_cb (flux_t *h,
                    flux_msg_handler_t *mh,
                    const flux_msg_t *msg,
                    void *arg)
{
    struct conduit *ctx = arg;
    json_int_t upto;
    json_t *dups = NULL;
    size_t d = 0;
    const char *errstr = NULL;

    if (flux_request_unpack (msg,
                             NULL,
                             "{s:I s?o}",
                             "upto", &upto,
                             "duplicates", &dups) < 0)
        goto error;
    if (!ctx->attach || !same_sender (msg, ctx->attach)) {
        errstr = "conduit.ack: only the attached datastore may acknowledge";
        errno = EPERM;
        goto error;
    }
    if (upto > ctx->sent_upto) {
        errstr = "conduit.ack: acknowledges packets never sent";
        errno = EPROTO;
        goto error;
    }
    if (dups && !json_is_array (dups)) {
        errstr = "conduit.ack: \"duplicates\" must be an array of ids";
        errno = EPROTO;
        goto error;
    }
    while (ctx->head && ctx->head->id <= upto) {
        struct held_put *p = ctx->head;
        json_int_t dup_id = -1;

        while (d < json_array_size (dups)
               && (dup_id = json_integer_value (json_array_get (dups, d)))
                      < p->id)
            d++;
        respond_put (ctx, p->msg, p->id, dup_id == p->id);
        if (dup_id == p->id)
            ctx->duplicates++;
        else
            ctx->stored++;
        ctx->head = p->next;
        ctx->held--;
        ctx->held_bytes -= p->bytes;
        flux_msg_decref (p->msg);
        free (p);
    }
    if (!ctx->head)
        ctx->tail = NULL;
    while (ctx->batches > 0 && ctx->batch_last[0] <= upto) {
        memmove (ctx->batch_last,
                 ctx->batch_last + 1,
                 sizeof (ctx->batch_last[0]) * --ctx->batches);
    }
    outbox_flush (ctx);
    if (flux_respond (h, msg, NULL) < 0)
        flux_log_error (h, "error responding to conduit.ack");
    return;
error:
    respond_error (ctx, msg, errno, errstr, "conduit.ack");
}

static void stats_cb (flux_t *h,
                      flux_msg_handler_t *mh,
                      const flux_msg_t *msg,
                      void *arg)
{
    struct conduit *ctx = arg;

    if (flux_respond_pack (h,
                           msg,
                           "{s:i s:b s:I s:I s:I s:I s:I s:I s:I s:I}",
                           "rank", (int)ctx->rank,
                           "attached", ctx->attach ? 1 : 0,
                           "datastore", ctx->datastore_jobid,
                           "held", (json_int_t)ctx->held,
                           "queued", (json_int_t)ctx->outbox.count,
                           "received", ctx->received,
                           "stored", ctx->stored,
                           "duplicates", ctx->duplicates,
                           "rejected", ctx->rejected,
                           "max_data", (json_int_t)ctx->max_data) < 0)
        flux_log_error (h, "error responding to conduit.stats");
}

/* A client went away.  If it was the datastore, the conduit closes.
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

static const struct flux_msg_handler_spec htab[] = {
    { FLUX_MSGTYPE_REQUEST, "conduit.put", put_cb, 0 },
    { FLUX_MSGTYPE_REQUEST, "conduit.attach", attach_cb, 0 },
    { FLUX_MSGTYPE_REQUEST, "conduit.ack", ack_cb, 0 },
    { FLUX_MSGTYPE_REQUEST, "conduit.stats", stats_cb, 0 },
    { FLUX_MSGTYPE_REQUEST, "conduit.disconnect", disconnect_cb, 0 },
    FLUX_MSGHANDLER_TABLE_END,
};

static int parse_size (const char *s, size_t *value)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull (s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v == 0 || *s == '-') {
        errno = EINVAL;
        return -1;
    }
    *value = (size_t)v;
    return 0;
}

static int conduit_parse_args (struct conduit *ctx, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strncmp (argv[i], "max-data=", 9) == 0) {
            if (parse_size (argv[i] + 9, &ctx->max_data) < 0)
                goto inval;
        }
        else if (strncmp (argv[i], "backlog=", 8) == 0) {
            if (parse_size (argv[i] + 8, &ctx->backlog) < 0)
                goto inval;
        }
        else if (strncmp (argv[i], "backlog-bytes=", 14) == 0) {
            if (parse_size (argv[i] + 14, &ctx->backlog_bytes) < 0)
                goto inval;
        }
        else if (strncmp (argv[i], "window=", 7) == 0) {
            if (parse_size (argv[i] + 7, &ctx->window) < 0
                || ctx->window > MAX_WINDOW)
                goto inval;
        }
        else
            goto inval;
    }
    return 0;
inval:
    flux_log (ctx->h,
              LOG_ERR,
              "%s: expected max-data=BYTES, backlog=PUTS, "
              "backlog-bytes=BYTES or window=1..%d",
              argv[0] ? argv[0] : "(null)",
              MAX_WINDOW);
    errno = EINVAL;
    return -1;
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
    ctx->window = default_window;
    ctx->max_data = default_max_data;
    ctx->backlog = default_backlog;
    ctx->backlog_bytes = default_backlog_bytes;
    ctx->next_id = 1;
    outbox_clear (&ctx->outbox);
    if (!ctx->outbox.text
        || flux_get_rank (h, &ctx->rank) < 0
        || flux_msg_handler_addvec (h, htab, ctx, &ctx->handlers) < 0)
        goto error;
    return ctx;
error:
    conduit_destroy (ctx);
    return NULL;
}

int mod_main (flux_t *h, int argc, char **argv)
{
    struct conduit *ctx;

    if (!(ctx = conduit_create (h))) {
        flux_log_error (h, "error initializing the conduit");
        return -1;
    }
    if (conduit_parse_args (ctx, argc, argv) < 0)
        goto error;
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
