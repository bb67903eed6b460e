// edgeclf.hpp — a header-only C++17 RAII wrapper over the C API (edgeclf.h).
//
// Errors become edgeclf::Error exceptions carrying the status code; objects free themselves.
// The thread-safety rule is the C API's: share one Model across threads, give each thread
// its own Session.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "edgeclf/edgeclf.h"

namespace edgeclf {

class Error : public std::runtime_error {
 public:
  Error(edgeclf_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  edgeclf_status status() const noexcept { return status_; }

 private:
  edgeclf_status status_;
};

inline void check(edgeclf_status status) {
  if (status != EDGECLF_OK) throw Error(status, std::string(edgeclf_status_name(status)) + ": " + edgeclf_last_error());
}

struct Score {
  int index;
  float probability;
  std::string label;
};

class Options {
 public:
  Options() {
    edgeclf_options* o = nullptr;
    check(edgeclf_options_create(&o));
    ptr_.reset(o);
  }
  Options& threads(int n) { check(edgeclf_options_set_threads(ptr_.get(), n)); return *this; }
  Options& backend(const std::string& b) { check(edgeclf_options_set_backend(ptr_.get(), b.c_str())); return *this; }
  Options& device(const std::string& d) { check(edgeclf_options_set_device(ptr_.get(), d.c_str())); return *this; }
  Options& precision(const std::string& p) { check(edgeclf_options_set_precision(ptr_.get(), p.c_str())); return *this; }
  Options& verify(bool v) { check(edgeclf_options_set_verify(ptr_.get(), v ? 1 : 0)); return *this; }
  Options& onnxruntime_library(const std::string& p) {
    check(edgeclf_options_set_onnxruntime_library(ptr_.get(), p.c_str()));
    return *this;
  }
  const edgeclf_options* get() const noexcept { return ptr_.get(); }

 private:
  struct Free { void operator()(edgeclf_options* o) const noexcept { edgeclf_options_free(o); } };
  std::unique_ptr<edgeclf_options, Free> ptr_;
};

class Model {
 public:
  explicit Model(const std::string& bundle_dir, const Options* options = nullptr) {
    edgeclf_model* m = nullptr;
    check(edgeclf_model_load(bundle_dir.c_str(), options ? options->get() : nullptr, &m));
    ptr_.reset(m);
  }
  size_t num_classes() const { size_t n = 0; check(edgeclf_model_num_classes(ptr_.get(), &n)); return n; }
  std::string label(int index) const {
    const char* s = nullptr;
    check(edgeclf_model_label(ptr_.get(), index, &s));
    return s;
  }
  std::string property(const std::string& name) const {
    const char* s = nullptr;
    check(edgeclf_model_property(ptr_.get(), name.c_str(), &s));
    return s;
  }
  std::string manifest_value(const std::string& pointer) const {
    size_t len = 0;
    const edgeclf_status st = edgeclf_model_manifest_value(ptr_.get(), pointer.c_str(), nullptr, 0, &len);
    if (st != EDGECLF_ERR_BUFFER_TOO_SMALL) check(st);
    std::string out(len + 1, '\0');
    check(edgeclf_model_manifest_value(ptr_.get(), pointer.c_str(), &out[0], out.size(), &len));
    out.resize(len);
    return out;
  }
  const edgeclf_model* get() const noexcept { return ptr_.get(); }

 private:
  struct Free { void operator()(edgeclf_model* m) const noexcept { edgeclf_model_free(m); } };
  std::unique_ptr<edgeclf_model, Free> ptr_;
};

class Session {
 public:
  explicit Session(const Model& model) : model_(&model) {
    edgeclf_session* s = nullptr;
    check(edgeclf_session_create(model.get(), &s));
    ptr_.reset(s);
  }
  std::vector<Score> classify(const edgeclf_image& image, size_t k = 5) {
    std::vector<edgeclf_class_score> top(k);
    size_t n = 0;
    check(edgeclf_classify(ptr_.get(), &image, top.data(), top.size(), &n));
    std::vector<Score> out;
    for (size_t i = 0; i < n; ++i) out.push_back({top[i].index, top[i].probability, model_->label(top[i].index)});
    return out;
  }
  std::vector<float> probabilities(const std::vector<edgeclf_image>& images) {
    std::vector<float> p(images.size() * model_->num_classes());
    check(edgeclf_probabilities(ptr_.get(), images.data(), images.size(), p.data(), p.size()));
    return p;
  }
  edgeclf_session* get() const noexcept { return ptr_.get(); }

 private:
  struct Free { void operator()(edgeclf_session* s) const noexcept { edgeclf_session_free(s); } };
  const Model* model_;
  std::unique_ptr<edgeclf_session, Free> ptr_;
};

}  // namespace edgeclf
