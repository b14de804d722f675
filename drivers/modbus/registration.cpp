// modbus_tcp and modbus_rtu as one source: the poller (one scheduler per channel, a bounded
// worker pool) serves both, so TCP and RTU devices share its workers.
#include <memory>

#include "drivers/modbus/config.hpp"
#include "drivers/modbus/poller.hpp"
#include "drivers/source.hpp"

namespace ferry::drivers::modbus {
namespace {

class modbus_source final : public source {
  public:
    modbus_source(std::vector<config::device> devices, const driver_context& ctx)
        : ids_(device_ids(devices)), poller_(std::move(devices), ctx) {}

    void start() override { poller_.start(); }
    void stop() override { poller_.stop(); }
    void update(std::vector<config::device> devices) override {
        auto next = device_ids(devices);
        poller_.update(std::move(devices));
        ids_ = std::move(next);
    }
    std::vector<source_status> status() const override {
        std::vector<source_status> out;
        const auto all = poller_.status();
        for (std::size_t i = 0; i < all.size() && i < ids_.size(); ++i)
            out.push_back({ids_[i], all[i].up, all[i].polls_ok, all[i].polls_failed});
        return out;
    }
    bool takes_writes() const override { return true; }
    std::string check_write(std::string_view device, std::string_view point,
                            const ferry::value& v) const override {
        return poller_.check_write(device, point, v);
    }
    void write(std::string_view device, std::string_view point, const ferry::value& v,
               write_done done) override {
        poller_.write(device, point, v, std::move(done));
    }

  private:
    std::vector<std::string> ids_;  // status() in config order
    poller poller_;
};

}  // namespace

const driver& registration() {
    static const driver d{
        "modbus",
        {&tcp_schema(), &rtu_schema()},
        [](const std::vector<config::device>& devices) { poller::check(devices); },
        [](std::vector<config::device> devices,
           const driver_context& ctx) -> std::unique_ptr<source> {
            return std::make_unique<modbus_source>(std::move(devices), ctx);
        }};
    return d;
}

}  // namespace ferry::drivers::modbus
