/* Stand-ins for the C entry points the TensorRT Python bindings take from libnvinfer,
 * libnvonnxparser, libnvinfer_plugin (and libnvparsers on 8.x). Compiled at test time once per
 * soname, so `import tensorrt_bindings` loads TensorRT's own enums, classes and pybind11
 * signatures. Every factory returns NULL: nothing can be built or run with it. */
#include <stddef.h>

void *createInferBuilder_INTERNAL(void *logger, int version) { return NULL; }
void *createInferRuntime_INTERNAL(void *logger, int version) { return NULL; }
void *createInferRefitter_INTERNAL(void *engine, void *logger, int version) { return NULL; }
void *createNvOnnxParser_INTERNAL(void *network, void *logger, int version) { return NULL; }
void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int version) { return NULL; }
void *getBuilderPluginRegistry(int capability) { return NULL; }
void *getPluginRegistry(void) { return NULL; }
int getNvOnnxParserVersion(void) { return 0; }
int initLibNvInferPlugins(void *logger, const char *ns) { return 0; }
/* 8.x only: nvuffparser / nvcaffeparser (C++ names, defined by their mangled symbols) */
void *_ZN11nvuffparser15createUffParserEv(void) { return NULL; }
void _ZN11nvuffparser8FieldMapC1EPKcPKvNS_9FieldTypeEi(void *self, const char *n, const void *d, int t, int l) {}
void *_ZN14nvcaffeparser117createCaffeParserEv(void) { return NULL; }
void _ZN14nvcaffeparser123shutdownProtobufLibraryEv(void) {}
