/* chat.c — the chat template of /v1/chat/completions ("ds4 chat v1"):
 *
 *     [<|bos|> token]  then for each message  "<|" role "|>\n" content "\n"
 *     and finally  "<|assistant|>\n"  where the reply starts.
 *
 * Role markers are plain text (the tokenizer never turns text into special
 * tokens). The reply ends at <|eos|>, at max_tokens, or at "\n<|" (the start
 * of the next role marker, never part of the reply). Roles: system,
 * developer, user, assistant, tool. Content: a string, null, or an array of
 * {"type": "text", "text": ...} parts, joined without separator. */
#include <stdlib.h>
#include <string.h>
#include "server/internal.h"

static const char *const ROLES[] = {"system", "developer", "user", "assistant", "tool"};

/* Append the text of one message's content; -1 with e set on a bad shape. */
static int add_content(srv_buf *b, const cJSON *c, int i, api_error *e) {
    if (!c || cJSON_IsNull(c)) return 0;
    if (cJSON_IsString(c)) { srv_buf_add(b, c->valuestring, strlen(c->valuestring)); return 0; }
    if (!cJSON_IsArray(c)) {
        api_err(e, 400, "invalid_request_error", NULL, "messages",
                "messages[%d].content must be a string, null or an array of text parts", i);
        return -1;
    }
    int k = 0;
    for (const cJSON *p = c->child; p; p = p->next, k++) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(p, "text");
        if (!cJSON_IsObject(p) || !cJSON_IsString(type)) {
            api_err(e, 400, "invalid_request_error", NULL, "messages",
                    "messages[%d].content[%d] must be an object with a string \"type\"", i, k);
            return -1;
        }
        if (strcmp(type->valuestring, "text") != 0) {
            api_err(e, 400, "invalid_request_error", NULL, "messages",
                    "messages[%d].content[%d]: content parts of type \"%.40s\" are not supported "
                    "(text only)", i, k, type->valuestring);
            return -1;
        }
        if (!cJSON_IsString(text)) {
            api_err(e, 400, "invalid_request_error", NULL, "messages",
                    "messages[%d].content[%d].text must be a string", i, k);
            return -1;
        }
        srv_buf_add(b, text->valuestring, strlen(text->valuestring));
    }
    return 0;
}

char *srv_chat_render(const cJSON *messages, api_error *e) {
    if (!cJSON_IsArray(messages) || !messages->child) {
        api_err(e, 400, "invalid_request_error", NULL, "messages",
                "'messages' must be a non-empty array of {role, content} objects");
        return NULL;
    }
    srv_buf b = {0};
    int i = 0;
    for (const cJSON *msg = messages->child; msg; msg = msg->next, i++) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(msg, "role");
        if (!cJSON_IsObject(msg) || !cJSON_IsString(role)) {
            api_err(e, 400, "invalid_request_error", NULL, "messages",
                    "messages[%d] must be an object with a string \"role\"", i);
            goto fail;
        }
        int known = 0;
        for (size_t r = 0; r < sizeof ROLES / sizeof ROLES[0]; r++)
            if (!strcmp(role->valuestring, ROLES[r])) known = 1;
        if (!known) {
            api_err(e, 400, "invalid_request_error", NULL, "messages",
                    "messages[%d].role '%.40s' is not one of system, developer, user, assistant, tool",
                    i, role->valuestring);
            goto fail;
        }
        srv_buf_printf(&b, "<|%s|>\n", role->valuestring);
        if (add_content(&b, cJSON_GetObjectItemCaseSensitive(msg, "content"), i, e)) goto fail;
        srv_buf_add(&b, "\n", 1);
    }
    srv_buf_add(&b, "<|assistant|>\n", 14);
    if (b.oom) {
        api_err(e, 500, "server_error", NULL, NULL, "out of memory rendering the chat template");
        goto fail;
    }
    return b.p;
fail:
    free(b.p);
    return NULL;
}
