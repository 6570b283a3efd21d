// The header as C++17 sees it: it must compile cleanly and declare the
// functions with C linkage. Compiled (not linked) by tests/capi_c.rs.
#include "heartbeat.h"

#include <type_traits>

static_assert(std::is_same_v<decltype(&hb_version), const char *(*)()>, "hb_version");
static_assert(HB_OK == 0 && HB_ERR_PANIC == 8, "fixed result codes");

int main() {
    hb_beater_options o{};
    if (hb_beater_options_default(&o) != HB_OK) {
        return 1;
    }
    hb_beater *b = nullptr;
    hb_beater_free(b);
    return hb_is_alive("/nonexistent", 1000) ? 1 : 0;
}
