#include "drivers/modbus/link_metrics.hpp"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <chrono>
#include <map>

namespace ferry::drivers::modbus {
namespace {

class metered_link final : public link {
  public:
    metered_link(std::unique_ptr<link> inner, prometheus::Registry& registry)
        : inner_(std::move(inner)),
          name_(inner_->name()),
          requests_(prometheus::BuildCounter()
                        .Name("ferry_modbus_channel_requests_total")
                        .Help("Modbus requests on each channel (TCP connection or serial port) "
                              "by result")
                        .Register(registry)),
          seconds_(prometheus::BuildHistogram()
                       .Name("ferry_modbus_channel_request_seconds")
                       .Help("Duration of one Modbus request on each channel (TCP connection "
                             "or serial port), connect included")
                       .Register(registry)
                       .Add({{"channel", name_}}, prometheus::Histogram::BucketBoundaries{
                                                      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                      0.05, 0.1, 0.25, 0.5, 1, 2.5, 5})) {
        count("ok", 0);  // the ok series exists from the start, so rates have a baseline
    }

    read_result read(int unit, table t, std::uint16_t address, std::uint16_t count_,
                     std::chrono::milliseconds timeout, std::uint16_t* out) override {
        const auto began = std::chrono::steady_clock::now();
        auto r = inner_->read(unit, t, address, count_, timeout, out);
        done(r, began);
        return r;
    }
    read_result write(int unit, std::uint8_t function, std::uint16_t address,
                      std::span<const std::uint16_t> values,
                      std::chrono::milliseconds timeout) override {
        const auto began = std::chrono::steady_clock::now();
        auto r = inner_->write(unit, function, address, values, timeout);
        done(r, began);
        return r;
    }
    void close() override { inner_->close(); }
    std::string name() const override { return name_; }

  private:
    void done(const read_result& r, std::chrono::steady_clock::time_point began) {
        seconds_.Observe(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count());
        count(r.ok() ? std::string("ok") : reason(r), 1);
    }
    void count(const std::string& result, double n) {
        auto it = by_result_.find(result);
        if (it == by_result_.end())
            it =
                by_result_.emplace(result, &requests_.Add({{"channel", name_}, {"result", result}}))
                    .first;
        it->second->Increment(n);
    }

    std::unique_ptr<link> inner_;
    std::string name_;
    prometheus::Family<prometheus::Counter>& requests_;
    prometheus::Histogram& seconds_;
    std::map<std::string, prometheus::Counter*> by_result_;
};

}  // namespace

std::unique_ptr<link> with_metrics(std::unique_ptr<link> inner, prometheus::Registry& registry) {
    return std::make_unique<metered_link>(std::move(inner), registry);
}

}  // namespace ferry::drivers::modbus
