// Parses a llama-server command line and environment with llama.cpp's own argument parser (common/arg.cpp's
// common_params_parse, as tools/server does with LLAMA_EXAMPLE_SERVER) and prints, as one JSON line, what
// llama-server would place and allocate with: layers, tensor buffer overrides, KV cache types, flash attention,
// fit, context and batch sizes. Built by the Makefile against the vendored llama.cpp source and the libllama /
// libggml of the installed llama-cpp-python wheel (tests/llama_args/build.sh).
#include "arg.h"
#include "common.h"
#include "ggml-backend.h"
#include "llama.h"

#include <cstdio>
#include <string>

static std::string quoted(const char * s) {
    std::string out = "\"";
    for (const char * p = s; p && *p; ++p) {
        const unsigned char c = (unsigned char) *p;
        if (c == '"' || c == '\\') {
            out += '\\';
            out += (char) c;
        } else if (c < 0x20) {
            char buf[8];
            snprintf(buf, sizeof(buf), "\\u%04x", c);
            out += buf;
        } else {
            out += (char) c;
        }
    }
    return out + "\"";
}

int main(int argc, char ** argv) {
    common_params params;
    if (!common_params_parse(argc, argv, params, LLAMA_EXAMPLE_SERVER)) {
        return 2;
    }
    std::string overrides;
    for (const auto & o : params.tensor_buft_overrides) {
        if (o.pattern == nullptr) {
            break;  // the list is padded with {nullptr, nullptr} for llama_params_fit
        }
        overrides += (overrides.empty() ? "" : ", ") + std::string("{\"pattern\": ") + quoted(o.pattern) +
                     ", \"buffer\": " + quoted(ggml_backend_buft_name(o.buft)) + "}";
    }
    printf("{\"n_gpu_layers\": %d, \"fit\": %s, \"n_ctx\": %d, \"n_batch\": %d, \"n_ubatch\": %d, \"n_parallel\": %d, "
           "\"cache_type_k\": %s, \"cache_type_v\": %s, \"flash_attn\": %s, \"overrides\": [%s]}\n",
           params.n_gpu_layers, params.fit_params ? "true" : "false", params.n_ctx, params.n_batch, params.n_ubatch,
           params.n_parallel, quoted(ggml_type_name(params.cache_type_k)).c_str(),
           quoted(ggml_type_name(params.cache_type_v)).c_str(),
           quoted(llama_flash_attn_type_name(params.flash_attn_type)).c_str(), overrides.c_str());
    return 0;
}
