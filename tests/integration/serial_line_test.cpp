// The serial_line driver end to end: a socat pty pair stands in for the serial cable; the test
// writes what a sensor would send to one end, `ferry run` reads the other, and the values are
// checked where a user sees them: at the MQTT broker and on /metrics.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <thread>

#include "tests/support/ferry_run.hpp"
#include "tests/support/paths.hpp"

using namespace ferry::test;
using nlohmann::json;

namespace {

// A socat pty pair: `dev` is what Ferry opens (the device), `sensor` is the test's end. The
// test keeps `sensor` open while the pair lives (socat ends the pair when its last user
// closes it).
class pty_pair {
  public:
    pty_pair(std::string dev, std::string sensor)
        : dev_(std::move(dev)), sensor_(std::move(sensor)) {
        start();
    }
    ~pty_pair() { stop(); }

    void start() {
        proc_ = std::make_unique<process>(std::vector<std::string>{
            "socat", "-d", "-d", "pty,raw,echo=0,link=" + dev_, "pty,raw,echo=0,link=" + sensor_});
        REQUIRE(wait_until(
            [&] {
                struct stat st {};
                return ::stat(dev_.c_str(), &st) == 0 && ::stat(sensor_.c_str(), &st) == 0;
            },
            5s));
        fd_ = ::open(sensor_.c_str(), O_RDWR | O_NOCTTY | O_CLOEXEC);
        REQUIRE(fd_ >= 0);
    }
    // Unplug: socat goes (SIGTERM, by pid), and with it both ptys and links.
    void stop() {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
        if (proc_) proc_->stop();
        proc_.reset();
        std::error_code ec;
        std::filesystem::remove(dev_, ec);  // in case socat could not
        std::filesystem::remove(sensor_, ec);
    }
    void send(const std::string& bytes) {
        std::size_t done = 0;
        while (done < bytes.size()) {
            auto n = ::write(fd_, bytes.data() + done, bytes.size() - done);
            REQUIRE(n > 0);
            done += static_cast<std::size_t>(n);
        }
    }
    // What Ferry wrote to the sensor within `timeout` (for poll requests).
    std::string receive(std::chrono::milliseconds timeout) {
        std::string out;
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(timeout.count())) > 0 && (p.revents & POLLIN)) {
            char buf[256];
            auto n = ::read(fd_, buf, sizeof buf);
            if (n > 0) out.assign(buf, static_cast<std::size_t>(n));
        }
        return out;
    }
    const std::string& dev() const { return dev_; }

  private:
    std::string dev_, sensor_;
    std::unique_ptr<process> proc_;
    int fd_ = -1;
};

struct reading {
    std::string device, tag, quality;
    json value;
    std::uint64_t seq = 0;
};

std::vector<reading> readings(const mqtt_recorder& rec) {
    std::vector<reading> out;
    for (const auto& m : rec.messages()) {
        if (m.topic.rfind("plant/", 0) != 0) continue;
        const auto doc =
            json::parse(m.payload);  // kept: a range-for over a temporary's member dangles
        for (const auto& e : doc["events"])
            out.push_back({e["device"], e["tag"], e["quality"], e["value"], e["seq"]});
    }
    return out;
}

std::vector<reading> of(const std::vector<reading>& all, const std::string& device,
                        const std::string& tag = {}) {
    std::vector<reading> out;
    for (const auto& r : all)
        if (r.device == device && (tag.empty() || r.tag == tag)) out.push_back(r);
    return out;
}

// One broker, a recorder on plant/#, a temp dir, and `ferry run` on tests/configs/serial_line.yaml
// with the given devices.
struct rig {
    mosquitto broker;
    temp_dir dir;
    mqtt_recorder rec{broker.uri(), {"plant/#"}};
    std::uint16_t http = free_port();
    std::unique_ptr<process> ferry;

    void run(const std::string& devices) {
        ferry = ferry_process(copy_config(dir, "serial_line", devices), dir.file("ferry.log"),
                              ferry_vars(dir.path(), http, 0, broker.uri()));
    }
    std::string log() const { return read_file(dir.file("ferry.log")); }
};

double sample(std::uint16_t http, const std::string& name, const std::string& device,
              const std::string& extra = {}) {
    std::string s = name + "{device=\"" + device + "\"" + extra + "}";
    return metric_value(http, s, -1);
}
double errors(std::uint16_t http, const std::string& device, const std::string& reason) {
    return sample(http, "ferry_driver_errors_total", device, ",reason=\"" + reason + "\"");
}

bool wait_up(std::uint16_t http, const std::string& device, double want = 1) {
    return wait_until([&] { return sample(http, "ferry_device_up", device) == want; }, 10s);
}

}  // namespace

TEST_CASE("each parser (regex, csv, json, kv, fixed length): values arrive at the broker") {
    rig env;
    pty_pair weather(env.dir.file("weather"), env.dir.file("weather.s"));
    pty_pair station(env.dir.file("station"), env.dir.file("station.s"));
    pty_pair analyser(env.dir.file("analyser"), env.dir.file("analyser.s"));
    pty_pair scale(env.dir.file("scale"), env.dir.file("scale.s"));
    pty_pair balance(env.dir.file("balance"), env.dir.file("balance.s"));
    env.run(
        "  - id: weather\n"
        "    driver: serial_line\n"
        "    serial: { port: " +
        weather.dev() +
        ", baud: 9600 }\n"
        "    parse: { regex: '^T=(?<temperature>-?[0-9.]+);H=(?<humidity>[0-9.]+)$' }\n"
        "    points: [ { name: temperature, type: float64, unit: degC }, "
        "{ name: humidity, type: float64, unit: \"%\" } ]\n"
        "  - id: station\n"
        "    driver: serial_line\n"
        "    serial: { port: " +
        station.dev() +
        ", baud: 19200, parity: E, stop_bits: 2 }\n"
        "    framing: { delimiter: \"\\r\\n\" }\n"
        "    parse: { csv: [wind, \"\", gust], separator: \";\" }\n"
        "    points: [ { name: wind, type: int32, scale: 0.1, unit: m/s }, "
        "{ name: gust, type: uint16 } ]\n"
        "  - id: analyser\n"
        "    driver: serial_line\n"
        "    serial: { port: " +
        analyser.dev() +
        ", baud: 115200 }\n"
        "    parse: { json: true }\n"
        "    points: [ { name: co2, type: uint16, unit: ppm }, { name: ok, type: bool }, "
        "{ name: id, type: string } ]\n"
        "  - id: scale\n"
        "    driver: serial_line\n"
        "    serial: { port: " +
        scale.dev() +
        " }\n"
        "    parse: { kv: true, checksum: nmea }\n"
        "    points: [ { name: weight, type: float64, unit: kg } ]\n"
        "  - id: balance\n"
        "    driver: serial_line\n"
        "    serial: { port: " +
        balance.dev() +
        " }\n"
        "    framing: { length: 8 }\n"
        "    parse: { regex: '^W(?<weight>[+-][0-9.]+)$' }\n"
        "    points: [ { name: weight, type: float64, unit: g } ]\n");
    for (const char* d : {"weather", "station", "analyser", "scale", "balance"})
        REQUIRE_MESSAGE(wait_up(env.http, d), std::string(d) << "\n" << env.log());

    weather.send("T=21.5;H=40.25\nT=-3;H=99\n");
    station.send("215;x;31\r\n");
    analyser.send("{\"co2\":415,\"ok\":true,\"id\":\"A-7\",\"fw\":\"1.2\"}\n");
    scale.send("weight=12.5*25\n");  // 25: the XOR of the bytes of "weight=12.5"
    balance.send("W+0012.5W-0001.0");
    REQUIRE_MESSAGE(wait_until([&] { return readings(env.rec).size() >= 12; }, 10s), env.log());
    const auto all = readings(env.rec);
    CHECK(all.size() == 12);
    auto t = of(all, "weather", "temperature");
    REQUIRE(t.size() == 2);
    CHECK(t[0].value == 21.5);
    CHECK(t[1].value == -3.0);
    CHECK(of(all, "weather", "humidity")[0].value == 40.25);
    CHECK(of(all, "station", "wind")[0].value == 21.5);
    CHECK(of(all, "station", "gust")[0].value == 31);
    CHECK(of(all, "analyser", "co2")[0].value == 415);
    CHECK(of(all, "analyser", "ok")[0].value == true);
    CHECK(of(all, "analyser", "id")[0].value == "A-7");
    CHECK(of(all, "scale", "weight")[0].value == 12.5);
    auto w = of(all, "balance", "weight");
    REQUIRE(w.size() == 2);
    CHECK(w[0].value == 12.5);
    CHECK(w[1].value == -1.0);
    for (const auto& r : all)
        CHECK(r.quality == "good");
    for (std::size_t i = 1; i < t.size(); ++i)
        CHECK(t[i].seq > t[i - 1].seq);
    CHECK(env.ferry->stop() == 0);
}

TEST_CASE("garbage, overlong, bad-checksum and bad-value lines between good ones") {
    rig env;
    pty_pair gps(env.dir.file("gps"), env.dir.file("gps.s"));
    env.run(
        "  - id: gps\n"
        "    driver: serial_line\n"
        "    serial: { port: " +
        gps.dev() +
        ", baud: 4800 }\n"
        "    framing: { delimiter: \"\\n\", max_frame: 64 }\n"
        "    parse: { regex: '^\\$FIX,(?<n>-?\\d+),(?<alt>[0-9.]+)$', checksum: nmea }\n"
        "    points: [ { name: n, type: int32 }, { name: alt, type: float64, unit: m } "
        "]\n");
    REQUIRE_MESSAGE(wait_up(env.http, "gps"), env.log());

    auto nmea = [](const std::string& body) {
        unsigned x = 0;
        for (char c : body.substr(1))
            x ^= static_cast<unsigned char>(c);
        char hh[4];
        std::snprintf(hh, sizeof hh, "*%02X", x);
        return body + hh;
    };
    const int good = 60;
    int parse = 0, too_long = 0, checksum = 0;
    std::string stream;
    for (int i = 0; i < good; ++i) {
        stream += nmea("$FIX," + std::to_string(i) + ",12.5") + "\r\n";
        switch (i % 5) {
            case 0:  // line noise: bytes of a wrong baud rate, with a valid-looking checksum
                stream += nmea("$\x01\xfe\x13garbage") + "\r\n";
                ++parse;
                break;
            case 1:  // a stream without delimiter for a while
                stream += std::string(300, 'x') + "\r\n";
                ++too_long;
                break;
            case 2:  // one bit flipped in transit
                stream += nmea("$FIX,1,12.5").substr(0, 12) + "*00\r\n";
                ++checksum;
                break;
            case 3:  // parses, but the value is not a number
                stream += nmea("$FIX,1,12.5.5") + "\r\n";
                ++parse;
                break;
            default:
                break;
        }
    }
    // In pieces of uneven size, as a UART delivers.
    for (std::size_t i = 0; i < stream.size(); i += 97)
        gps.send(stream.substr(i, 97));
    // A line that matches but whose value does not convert (case 3) was meant to carry `n`
    // and `alt`: each gets one `bad` event (value null) in its place; the lines that do not
    // show which points they carry (noise, too long, bad checksum) are only counted.
    const std::size_t bad_lines = good / 5;
    REQUIRE_MESSAGE(
        wait_until([&] { return of(readings(env.rec), "gps", "n").size() >= good + bad_lines; },
                   10s),
        env.log());
    const auto n = of(readings(env.rec), "gps", "n");
    REQUIRE(n.size() == good + bad_lines);
    std::size_t k = 0;
    for (int i = 0; i < good; ++i) {
        CHECK(n[k].quality == "good");
        CHECK(n[k++].value == i);  // all of them, in order
        if (i % 5 == 3) {
            CHECK(n[k].quality == "bad");
            CHECK(n[k++].value.is_null());
        }
    }
    const auto alt = of(readings(env.rec), "gps", "alt");
    CHECK(alt.size() == good + bad_lines);
    CHECK(errors(env.http, "gps", "parse") == parse);
    CHECK(errors(env.http, "gps", "too_long") == too_long);
    CHECK(errors(env.http, "gps", "checksum") == checksum);
    CHECK(sample(env.http, "ferry_serial_frames_total", "gps", ",result=\"ok\"") == good);
    CHECK(sample(env.http, "ferry_serial_frames_total", "gps", ",result=\"error\"") ==
          parse + too_long + checksum);
    CHECK(sample(env.http, "ferry_device_up", "gps") == 1);
    CHECK(env.ferry->stop() == 0);
}

TEST_CASE("invalid UTF-8 from a sensor: upstream and /api/v1/values stay strict JSON, U+FFFD") {
    // Issue 14, item 4: `caf\xe9\xff\x01,22.5` used to put the raw bytes E9 FF into the batch
    // and into /api/v1/values, and a strict parser then refused the whole batch.
    rig env;
    pty_pair tag(env.dir.file("tag"), env.dir.file("tag.s"));
    pty_pair lab(env.dir.file("lab"), env.dir.file("lab.s"));
    env.run(
        "  - id: tag\n"
        "    driver: serial_line\n"
        "    serial: { port: " +
        tag.dev() +
        " }\n"
        "    parse: { csv: [name, t] }\n"
        "    points: [ { name: name, type: string }, { name: t, type: float64 } ]\n"
        "  - id: lab\n"
        "    driver: serial_line\n"
        "    serial: { port: " +
        lab.dev() +
        " }\n"
        "    parse: { json: true }\n"
        "    points: [ { name: id, type: string }, { name: ph, type: float64 } ]\n");
    for (const char* d : {"tag", "lab"})
        REQUIRE_MESSAGE(wait_up(env.http, d), std::string(d) << "\n" << env.log());
    tag.send("caf\xe9\xff\x01,22.5\n");
    tag.send("ok \xc3\xa9t\xc3\xa9,23.5\n");                 // valid UTF-8 (é) passes unchanged
    lab.send("{\"id\":\"S\xed\xa0\x80-1\",\"ph\":7.25}\n");  // a surrogate: ill-formed

    const std::string fffd = "\xef\xbf\xbd";
    std::vector<json> events;
    std::vector<std::string> refused;
    auto collect = [&] {
        events.clear();
        refused.clear();
        for (const auto& m : env.rec.messages()) {
            // Strict: nlohmann refuses ill-formed UTF-8 and raw control characters.
            const auto doc = json::parse(m.payload, nullptr, false);
            if (doc.is_discarded()) {
                refused.push_back(m.payload);
                continue;
            }
            for (const auto& e : doc["events"])
                events.push_back(e);
        }
        return events.size() + refused.size();
    };
    const bool arrived = wait_until([&] { return collect() >= 6 || !refused.empty(); }, 10s);
    REQUIRE_MESSAGE(refused.empty(), "a batch is not strict JSON: " << refused[0]);
    REQUIRE_MESSAGE(arrived, env.log());
    std::map<std::string, std::vector<json>> by;
    for (const auto& e : events)
        by[e["device"].get<std::string>() + "/" + e["tag"].get<std::string>()].push_back(
            e["value"]);
    REQUIRE(by["tag/name"].size() == 2);
    CHECK(by["tag/name"][0] == "caf" + fffd + fffd + "\x01");
    CHECK(by["tag/name"][1] == "ok \xc3\xa9t\xc3\xa9");
    CHECK(by["tag/t"].size() == 2);
    REQUIRE(by["lab/id"].size() == 1);
    CHECK(by["lab/id"][0] == "S" + fffd + fffd + fffd + "-1");
    CHECK(by["lab/ph"].size() == 1);

    // The read model serves the same text, as strict JSON.
    const auto body = http_get(env.http, "/api/v1/values").body;
    const auto values = json::parse(body, nullptr, false);
    REQUIRE_MESSAGE(!values.is_discarded(), "not strict JSON: " << body);
    std::map<std::string, json> last;
    for (const auto& v : values)
        last[v["device"].get<std::string>() + "/" + v["tag"].get<std::string>()] = v["value"];
    CHECK(last["tag/name"] == "ok \xc3\xa9t\xc3\xa9");
    CHECK(last["lab/id"] == "S" + fffd + fffd + fffd + "-1");
    // Counted per device (frames repaired), and logged.
    CHECK(sample(env.http, "ferry_invalid_utf8_total", "tag") == 1);
    CHECK(sample(env.http, "ferry_invalid_utf8_total", "lab") == 1);
    CHECK(env.log().find("not valid UTF-8") != std::string::npos);
    CHECK(env.ferry->stop() == 0);
}

TEST_CASE("unplug and replug: the device goes down with bad values, then resumes") {
    rig env;
    const std::string status_topic = "ferry/serial-gw/device/probe/status";
    mqtt_recorder statuses(env.broker.uri(), {status_topic});
    auto cable = std::make_unique<pty_pair>(env.dir.file("usb0"), env.dir.file("usb0.s"));
    env.run(
        "  - id: probe\n"
        "    driver: serial_line\n"
        "    serial: { port: " +
        cable->dev() +
        " }\n"
        "    parse: { kv: true }\n"
        "    points: [ { name: t, type: float64 } ]\n");
    REQUIRE_MESSAGE(wait_up(env.http, "probe"), env.log());
    cable->send("t=1\n");
    REQUIRE_MESSAGE(wait_until([&] { return of(readings(env.rec), "probe").size() >= 1; }, 10s),
                    env.log());

    cable->stop();  // the USB adapter is pulled
    REQUIRE_MESSAGE(wait_up(env.http, "probe", 0), env.log());
    REQUIRE(wait_until([&] { return of(readings(env.rec), "probe").size() >= 2; }, 10s));
    auto r = of(readings(env.rec), "probe");
    CHECK(r[1].quality == "bad");
    CHECK(r[1].value.is_null());
    CHECK(errors(env.http, "probe", "io") >= 1);
    CHECK(env.ferry->running());

    cable->start();  // plugged in again: same link name, a new pty behind it
    REQUIRE_MESSAGE(wait_up(env.http, "probe"), env.log());
    cable->send("t=2\n");
    REQUIRE_MESSAGE(wait_until([&] { return of(readings(env.rec), "probe").size() >= 3; }, 10s),
                    env.log());
    r = of(readings(env.rec), "probe");
    CHECK(r.size() == 3);  // one bad event for the outage, not one per retry
    CHECK(r[2].quality == "good");
    CHECK(r[2].value == 2.0);

    // Its retained status followed: online, offline with the reason, online again; one
    // message per change (the reopen attempts while unplugged change nothing).
    REQUIRE(statuses.wait_for_count(status_topic, 3, 10s));
    std::this_thread::sleep_for(300ms);
    const auto seen = statuses.messages_on(status_topic);
    REQUIRE(seen.size() == 3);
    const auto first = nlohmann::json::parse(seen[0].payload);
    const auto lost = nlohmann::json::parse(seen[1].payload);
    const auto back = nlohmann::json::parse(seen[2].payload);
    CHECK(first["state"] == "online");
    CHECK(lost["state"] == "offline");
    CHECK(lost["reason"].get<std::string>().rfind("port lost: ", 0) == 0);
    CHECK(back["state"] == "online");
    CHECK(back["since"].get<std::int64_t>() > lost["since"].get<std::int64_t>());
    mqtt_recorder late(env.broker.uri(), {status_topic});
    REQUIRE(late.wait_for_count(status_topic, 1, 10s));
    CHECK(late.messages_on(status_topic)[0].retained);
    CHECK(nlohmann::json::parse(late.messages_on(status_topic)[0].payload) == back);
    CHECK(env.ferry->stop() == 0);
}

TEST_CASE("poll: the request is written at the interval and the answers arrive") {
    rig env;
    pty_pair meter(env.dir.file("meter"), env.dir.file("meter.s"));
    env.run(
        "  - id: meter\n"
        "    driver: serial_line\n"
        "    serial: { port: " +
        meter.dev() +
        " }\n"
        "    poll: { request: \"READ?\\r\\n\", interval: 100ms }\n"
        "    parse: { csv: [v] }\n"
        "    points: [ { name: v, type: uint32 } ]\n");
    std::string asked;
    int answered = 0;
    const auto until = std::chrono::steady_clock::now() + 10s;
    // A sensor that answers each request it sees with an increasing count.
    while (answered < 5 && std::chrono::steady_clock::now() < until) {
        asked += meter.receive(200ms);
        for (auto pos = asked.find("READ?\r\n"); pos != std::string::npos;
             pos = asked.find("READ?\r\n")) {
            asked.erase(0, pos + 7);
            meter.send(std::to_string(++answered) + "\n");
        }
    }
    REQUIRE_MESSAGE(answered == 5, env.log());
    REQUIRE(wait_until([&] { return of(readings(env.rec), "meter").size() >= 5; }, 10s));
    const auto v = of(readings(env.rec), "meter");
    for (std::size_t i = 0; i < 5; ++i)
        CHECK(v[i].value == i + 1);
    CHECK(env.ferry->stop() == 0);
}

TEST_CASE("ferry check: the driver's example is valid") {
    const std::string example = std::string(FERRY_SOURCE_DIR) + "/drivers/serial/example.yaml";
    temp_dir dir;
    auto run_check = [&](const std::string& file) {
        process p({FERRY_BINARY, "check", "-c", file}, dir.file("check.log"));
        auto code = p.wait(10s);
        std::string out = read_file(dir.file("check.log"));
        std::filesystem::remove(dir.file("check.log"));
        return std::make_pair(code.value_or(-1), out);
    };
    auto [code, out] = run_check(example);
    CHECK(code == 0);
    CHECK(out == example + ": ok\n");
    // A bad regex, and framing/poll keys that do not fit: the serial_line_framing_poll case of
    // tests/testcases/config (ferry check's exact output, exit 1: tests/integration/cli_test.cpp).
}
