// serial_line as a source: the reader (one Boost.Asio thread for every port).
#include <memory>

#include "drivers/serial/config.hpp"
#include "drivers/serial/reader.hpp"
#include "drivers/source.hpp"

namespace ferry::drivers::serial {
namespace {

class line_source final : public source {
  public:
    line_source(std::vector<config::device> devices, const driver_context& ctx)
        : ids_(device_ids(devices)), reader_(std::move(devices), ctx) {}

    void start() override { reader_.start(); }
    void stop() override { reader_.stop(); }
    void update(std::vector<config::device> devices) override {
        auto next = device_ids(devices);
        reader_.update(std::move(devices));
        ids_ = std::move(next);
    }
    std::vector<source_status> status() const override {
        std::vector<source_status> out;
        const auto all = reader_.status();
        for (std::size_t i = 0; i < all.size() && i < ids_.size(); ++i)
            out.push_back({ids_[i], all[i].up, all[i].frames_ok, all[i].frames_bad});
        return out;
    }

  private:
    std::vector<std::string> ids_;  // status() in config order
    reader reader_;
};

}  // namespace

const driver& registration() {
    static const driver d{
        "serial_line",
        {&line_schema()},
        [](const std::vector<config::device>& devices) { reader::check(devices); },
        [](std::vector<config::device> devices,
           const driver_context& ctx) -> std::unique_ptr<source> {
            return std::make_unique<line_source>(std::move(devices), ctx);
        }};
    return d;
}

}  // namespace ferry::drivers::serial
