#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>
float run(long iters){
  __m512 a[12]; for(int i=0;i<12;i++) a[i]=_mm512_set1_ps(i*0.001f);
  __m512 b=_mm512_set1_ps(0.999f), c=_mm512_set1_ps(0.0001f);
  for(long n=0;n<iters;n++){
#pragma GCC unroll 12
    for(int i=0;i<12;i++) a[i]=_mm512_fmadd_ps(a[i],b,c);
  }
  __m512 s=a[0]; for(int i=1;i<12;i++) s=_mm512_add_ps(s,a[i]); return _mm512_reduce_add_ps(s);
}
int main(){
  long iters=200000000;
  for(int th=1;th<=2;th++){
    auto t0=std::chrono::steady_clock::now();
    std::vector<std::thread> ts; float sink=0;
    for(int t=0;t<th;t++) ts.emplace_back([&]{ volatile float r=run(iters); (void)r;});
    for(auto&t:ts) t.join();
    double s=std::chrono::duration<double>(std::chrono::steady_clock::now()-t0).count();
    printf("threads %d: %.1f GFLOP/s (%.2f zmm FMA/ns per thread)\n", th, th*iters*12.0*32/s/1e9, iters*12.0/s/1e9);
  }
}
