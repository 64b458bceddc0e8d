// The functions of llama.cpp's common library that common/arg.cpp refers to but that parsing placement, KV-cache
// and flash-attention settings never reaches: model download (-hf, -dr, --cache-list), config-file presets
// (/etc/llama.cpp/config.ini, $XDG_CONFIG_HOME/llama.cpp/config.ini), chat-template checks (--chat-template),
// --reasoning-format, --json-schema, --version. Linking the real ones would compile most of common/ (the HTTP
// client, the chat parsers, the Jinja engine). Each stub throws, so reaching one fails loudly instead of
// answering wrongly. Everything else the harness runs is llama.cpp's own code, compiled unchanged.
#include "chat.h"
#include "download.h"
#include "hf-cache.h"
#include "json-schema-to-grammar.h"
#include "preset.h"

#include <stdexcept>
#include <string>

[[noreturn]] static void not_linked(const char * what) {
    throw std::logic_error(std::string("not linked into the ggtool argument harness: ") + what);
}

void common_download_run_tasks(const std::vector<common_download_task> &) { not_linked("download"); }
std::vector<std::string> common_download_get_all_parts(const std::string &) { not_linked("download"); }
std::vector<common_cached_model_info> common_list_cached_models() { not_linked("--cache-list"); }
std::string common_docker_resolve_model(const std::string &) { not_linked("-dr"); }
common_download_hf_plan common_download_get_hf_plan(const common_params_model &, const common_download_opts &) {
    not_linked("-hf");
}
std::string hf_cache::finalize_file(const hf_cache::hf_file &) { not_linked("-hf"); }
void common_preset::apply_to_params(common_params &, const std::set<std::string> &) const { not_linked("config.ini"); }
common_preset_context::common_preset_context(llama_example) : ctx_params(default_params) {
    not_linked("config.ini");
}
common_presets common_preset_context::load_from_ini(const std::filesystem::path &, common_preset &) const {
    not_linked("config.ini");
}
bool common_chat_verify_template(const std::string &, bool) { not_linked("--chat-template"); }
common_reasoning_format common_reasoning_format_from_name(const std::string &) { not_linked("--reasoning-format"); }
std::string json_schema_to_grammar(const common_json &, bool) { not_linked("--json-schema"); }
