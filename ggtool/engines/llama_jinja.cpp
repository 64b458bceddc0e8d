// ggtool's harness for llama.cpp's own chat-template engine (common/jinja), built against the vendored source of
// the pinned llama-cpp-python. It renders a template the way common_chat_template_direct_apply_impl
// (common/chat.cpp) does: lexer -> parser -> caps_get, messages normalized to the content form the template
// supports, the request's globals set with global_from_json, the program executed and its string parts joined.
//
// stdin:  {"template": str, "cases": [{"messages": [...], "bos_token": str, "eos_token": str,
//           "add_generation_prompt": bool, "tools": [...]?}, ...]}
// stdout: [{"ok": true, "text": str} | {"ok": false, "error": str}, ...]

#include "ggml.h"
#include "json.h"
#include "jinja/caps.h"
#include "jinja/lexer.h"
#include "jinja/parser.h"
#include "jinja/runtime.h"
#include "jinja/value.h"

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <iterator>
#include <string>

// common/json.cpp asserts with GGML_ASSERT; the harness does not link ggml, so its abort is provided here
void ggml_abort(const char * file, int line, const char * fmt, ...) {
    std::fprintf(stderr, "%s:%d: ", file, line);
    va_list args;
    va_start(args, fmt);
    std::vfprintf(stderr, fmt, args);
    va_end(args);
    std::fputc('\n', stderr);
    std::abort();
}

// as messages_inp_normalizer::normalize: string content becomes typed parts for templates that only take parts
static common_json normalize_messages(const common_json & messages, const jinja::caps & caps) {
    const bool only_typed = !caps.supports_string_content && caps.supports_typed_content;
    if (!only_typed || !messages.is_array()) {
        return messages;
    }
    common_json out = common_json::array();
    for (size_t i = 0; i < messages.size(); i++) {
        common_json copy = messages.at(i);
        if (copy.contains("content") && copy.at("content").is_string()) {
            common_json part = common_json::object();
            part["type"] = "text";
            part["text"] = copy.at("content").get<std::string>();
            common_json parts = common_json::array();
            parts.push_back(part);
            copy["content"] = parts;
        }
        out.push_back(copy);
    }
    return out;
}

static common_json failure(const std::string & error) {
    common_json r = common_json::object();
    r["ok"] = false;
    r["error"] = error;
    return r;
}

int main() {
    std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    common_json job = common_json::parse(input);
    const std::string source = job.at("template").get<std::string>();
    const common_json & cases = job.at("cases");

    common_json results = common_json::array();
    jinja::program prog;
    jinja::caps caps;
    std::string parse_error;
    std::string lexed_source = source;
    try {
        jinja::lexer lexer;
        auto lexed = lexer.tokenize(source);
        prog = jinja::parse_from_tokens(lexed);
        lexed_source = lexed.source;
        caps = jinja::caps_get(prog);
    } catch (const std::exception & e) {
        parse_error = e.what();
    }
    for (size_t i = 0; i < cases.size(); i++) {
        if (!parse_error.empty()) {
            results.push_back(failure(parse_error));
            continue;
        }
        try {
            const common_json & c = cases.at(i);
            common_json inp = common_json::object();
            inp["messages"] = normalize_messages(c.at("messages"), caps);
            inp["bos_token"] = c.contains("bos_token") ? c.at("bos_token") : common_json::make("");
            inp["eos_token"] = c.contains("eos_token") ? c.at("eos_token") : common_json::make("");
            if (c.contains("tools") && !c.at("tools").is_null()) {
                inp["tools"] = c.at("tools");
            }
            if (c.contains("add_generation_prompt") && c.at("add_generation_prompt").get<bool>()) {
                inp["add_generation_prompt"] = true;
            }
            jinja::context ctx(lexed_source);
            jinja::global_from_json(ctx, inp, false);
            jinja::runtime runtime(ctx);
            const jinja::value out = runtime.execute(prog);
            auto parts = jinja::runtime::gather_string_parts(out);
            common_json r = common_json::object();
            r["ok"] = true;
            r["text"] = parts->as_string().str();
            results.push_back(r);
        } catch (const std::exception & e) {
            results.push_back(failure(e.what()));
        }
    }
    std::cout << results.dump_safe();
    return 0;
}
