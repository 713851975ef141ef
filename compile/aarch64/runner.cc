// convhub_runner: run a convhub TVM artifact with nothing but the TVM runtime (no Python).
//
//   convhub_runner ARTIFACT_DIR INPUT.npy OUT_DIR [--device cpu|cuda|opencl] [--repeat N]
//
// Loads ARTIFACT_DIR/model.so and ARTIFACT_DIR/params.safetensors (parameter order from the
// "convhub.param_order" metadata), runs `main` on INPUT.npy (float32, N x 3 x H x W, C order) and
// writes OUT_DIR/output_<i>.npy in the manifest's output order. Prints one timing line on stderr.
// Links against libtvm_runtime.so + libtvm_ffi.so (the apache-tvm / apache-tvm-ffi wheels hold them
// for x86_64 and aarch64). This is both our qemu verification tool and the device deployment example.
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using tvm::ffi::Tensor;

// Allocation and copies go through the runtime's registered functions: libtvm_runtime.so exports
// them for every device type it was built with, and the wheel ships no C++ headers for the classes.
tvm::ffi::Function Global(const char* name) {
  auto f = tvm::ffi::Function::GetGlobal(name);
  if (!f) throw std::runtime_error(std::string("TVM runtime lacks ") + name);
  return *f;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

struct Blob {
  std::vector<int64_t> shape;
  std::string dtype;  // safetensors dtype ("F32") or numpy descr ("<f4")
  const char* data = nullptr;
  size_t nbytes = 0;
};

// A minimal reader for the safetensors header: {"name": {"dtype": "F32", "shape": [..],
// "data_offsets": [a, b]}, ..., "__metadata__": {"key": "value"}}. Only what that format uses.
class HeaderParser {
 public:
  explicit HeaderParser(const std::string& s) : s_(s) {}
  void Ws() { while (i_ < s_.size() && isspace(static_cast<unsigned char>(s_[i_]))) ++i_; }
  void Expect(char c) {
    Ws();
    if (i_ >= s_.size() || s_[i_] != c) throw std::runtime_error(std::string("safetensors header: expected ") + c);
    ++i_;
  }
  bool Peek(char c) { Ws(); return i_ < s_.size() && s_[i_] == c; }
  std::string Str() {
    Expect('"');
    std::string out;
    while (i_ < s_.size() && s_[i_] != '"') {
      if (s_[i_] == '\\') ++i_;
      out += s_[i_++];
    }
    ++i_;
    return out;
  }
  int64_t Int() {
    Ws();
    size_t end = i_;
    while (end < s_.size() && (isdigit(static_cast<unsigned char>(s_[end])) || s_[end] == '-')) ++end;
    int64_t v = std::stoll(s_.substr(i_, end - i_));
    i_ = end;
    return v;
  }
  std::vector<int64_t> IntList() {
    std::vector<int64_t> v;
    Expect('[');
    while (!Peek(']')) {
      v.push_back(Int());
      if (Peek(',')) ++i_;
    }
    ++i_;
    return v;
  }

 private:
  const std::string& s_;
  size_t i_ = 0;
};

// Parses a safetensors file held in `file`; returns tensors by name and fills `metadata`.
std::map<std::string, Blob> ReadSafetensors(const std::string& file, std::map<std::string, std::string>* metadata) {
  if (file.size() < 8) throw std::runtime_error("params file too short");
  uint64_t n = 0;
  std::memcpy(&n, file.data(), 8);  // little-endian on every target we build for
  std::string header = file.substr(8, n);
  const char* base = file.data() + 8 + n;
  std::map<std::string, Blob> out;
  HeaderParser p(header);
  p.Expect('{');
  while (!p.Peek('}')) {
    std::string name = p.Str();
    p.Expect(':');
    p.Expect('{');
    Blob b;
    int64_t begin = 0, end = 0;
    while (!p.Peek('}')) {
      std::string key = p.Str();
      p.Expect(':');
      if (name == "__metadata__") {
        (*metadata)[key] = p.Str();
      } else if (key == "dtype") {
        b.dtype = p.Str();
      } else if (key == "shape") {
        b.shape = p.IntList();
      } else if (key == "data_offsets") {
        std::vector<int64_t> o = p.IntList();
        begin = o.at(0);
        end = o.at(1);
      }
      if (p.Peek(',')) p.Expect(',');
    }
    p.Expect('}');
    if (name != "__metadata__") {
      b.data = base + begin;
      b.nbytes = static_cast<size_t>(end - begin);
      out[name] = b;
    }
    if (p.Peek(',')) p.Expect(',');
  }
  return out;
}

// .npy v1/v2, float32 little-endian, C order (what numpy.save writes for our inputs).
Blob ReadNpy(const std::string& file) {
  if (file.compare(0, 6, "\x93NUMPY") != 0) throw std::runtime_error("input is not a .npy file");
  int major = file[6];
  size_t hlen, off;
  if (major == 1) {
    hlen = static_cast<uint8_t>(file[8]) | (static_cast<uint8_t>(file[9]) << 8);
    off = 10;
  } else {
    uint32_t h;
    std::memcpy(&h, file.data() + 8, 4);
    hlen = h;
    off = 12;
  }
  std::string header = file.substr(off, hlen);
  if (header.find("'<f4'") == std::string::npos || header.find("'fortran_order': False") == std::string::npos)
    throw std::runtime_error("input .npy must be float32 little-endian in C order, header: " + header);
  size_t a = header.find('(', header.find("'shape'")), b = header.find(')', a);
  Blob blob;
  std::stringstream dims(header.substr(a + 1, b - a - 1));
  std::string tok;
  while (std::getline(dims, tok, ','))
    if (tok.find_first_not_of(" ") != std::string::npos) blob.shape.push_back(std::stoll(tok));
  blob.dtype = "F32";
  blob.data = file.data() + off + hlen;
  blob.nbytes = file.size() - off - hlen;
  return blob;
}

void WriteNpy(const std::string& path, const Tensor& t) {
  const DLTensor* dl = t.GetDLTensorPtr();
  if (dl->dtype.code != kDLFloat || dl->dtype.bits != 32) throw std::runtime_error("only float32 outputs supported");
  std::string shape = "(";
  size_t count = 1;
  for (int i = 0; i < dl->ndim; ++i) {
    shape += std::to_string(dl->shape[i]) + (dl->ndim == 1 ? ",)" : (i + 1 < dl->ndim ? ", " : ")"));
    count *= static_cast<size_t>(dl->shape[i]);
  }
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::vector<char> data(count * 4);
  static tvm::ffi::Function copy_to = Global("runtime.TVMTensorCopyToBytes");
  copy_to(t, static_cast<void*>(data.data()), data.size());
  std::ofstream f(path, std::ios::binary);
  uint16_t hl = static_cast<uint16_t>(header.size());
  f.write("\x93NUMPY\x01\x00", 8);
  f.write(reinterpret_cast<const char*>(&hl), 2);
  f << header;
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
  if (!f) throw std::runtime_error("cannot write " + path);
}

Tensor ToDevice(const Blob& b, DLDevice dev) {
  if (b.dtype != "F32") throw std::runtime_error("only F32 tensors supported, got " + b.dtype);
  static tvm::ffi::Function empty = Global("runtime.TVMTensorAllocWithScope");
  static tvm::ffi::Function copy_from = Global("runtime.TVMTensorCopyFromBytes");
  Tensor t = empty(tvm::ffi::Shape(b.shape), DLDataType{kDLFloat, 32, 1}, dev, nullptr).cast<Tensor>();
  copy_from(t, const_cast<void*>(static_cast<const void*>(b.data)), b.nbytes);
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: " << argv[0] << " ARTIFACT_DIR INPUT.npy OUT_DIR [--device cpu|cuda|opencl] [--repeat N]\n";
    return 2;
  }
  std::string dir = argv[1], input = argv[2], out_dir = argv[3];
  DLDevice dev{kDLCPU, 0};
  int repeat = 1;
  for (int i = 4; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--device") dev.device_type = v == "cuda" ? kDLCUDA : v == "opencl" ? kDLOpenCL : kDLCPU;
    if (k == "--repeat") repeat = std::stoi(v);
  }
  try {
    namespace ffi = tvm::ffi;
    ffi::Module lib = ffi::Module::LoadFromFile(dir + "/model.so");
    ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    const int kPooled = 2;  // tvm::runtime::memory::AllocatorType::kPooled
    vm->GetFunction("vm_initialization").value()(static_cast<int>(dev.device_type), dev.device_id, kPooled,
                                                  static_cast<int>(kDLCPU), 0, kPooled);

    std::string params_file = ReadFile(dir + "/params.safetensors");
    std::map<std::string, std::string> meta;
    std::map<std::string, Blob> blobs = ReadSafetensors(params_file, &meta);
    std::vector<Tensor> params;
    std::stringstream order(meta["convhub.param_order"]);
    std::string name;
    while (std::getline(order, name, ',')) params.push_back(ToDevice(blobs.at(name), dev));
    // weights packed once: "transform_params" (convhub's CPU pipeline), "main_transform_params" (tuned builds)
    for (const char* fname : {"transform_params", "main_transform_params"}) {
      if (auto transform = vm->GetFunction(fname)) {
        ffi::Array<Tensor> packed = (*transform)(ffi::Array<Tensor>(params.begin(), params.end()))
                                        .cast<ffi::Array<Tensor>>();
        params.assign(packed.begin(), packed.end());
        break;
      }
    }

    std::string input_file = ReadFile(input);
    Tensor x = ToDevice(ReadNpy(input_file), dev);
    std::vector<ffi::AnyView> args;
    args.emplace_back(x);
    for (const Tensor& p : params) args.emplace_back(p);
    // a single image runs the batch-1 entry where the artifact has one, as compile.artifact does on the host
    ffi::Function main_fn = vm->GetFunction("main").value();
    if (x.GetDLTensorPtr()->shape[0] == 1) {
      if (auto one = vm->GetFunction("main_batch1")) main_fn = one.value();
    }
    ffi::Any result;
    auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < repeat; ++r) main_fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
    auto t1 = std::chrono::steady_clock::now();

    std::vector<Tensor> outs;
    if (auto one = result.as<Tensor>()) {
      outs.push_back(*one);
    } else {
      for (const ffi::Any& o : result.cast<ffi::Array<ffi::Any>>()) outs.push_back(o.cast<Tensor>());
    }
    for (size_t i = 0; i < outs.size(); ++i) WriteNpy(out_dir + "/output_" + std::to_string(i) + ".npy", outs[i]);
    double ms = std::chrono::duration<double, std::milli>(t1 - t0).count() / repeat;
    std::cerr << "convhub_runner: " << outs.size() << " output(s), " << ms << " ms per run\n";
  } catch (const std::exception& e) {
    std::cerr << "convhub_runner: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
