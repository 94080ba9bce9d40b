#include <immintrin.h>
#include <sys/mman.h>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
float sum(const float* p, size_t n){ __m512 a=_mm512_setzero_ps(),b=a,c=a,d=a; for(size_t i=0;i<n;i+=64){ a=_mm512_add_ps(a,_mm512_load_ps(p+i)); b=_mm512_add_ps(b,_mm512_load_ps(p+i+16)); c=_mm512_add_ps(c,_mm512_load_ps(p+i+32)); d=_mm512_add_ps(d,_mm512_load_ps(p+i+48)); __builtin_prefetch(p+i+1024);} return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a,b),_mm512_add_ps(c,d)));}
double bench(float* p, size_t n){ double best=1e9; for(int r=0;r<8;r++){ auto t0=std::chrono::steady_clock::now(); volatile float s1,s2; std::thread t([&]{s1=sum(p,n/2);}); s2=sum(p+n/2,n/2); t.join(); best=std::min(best,std::chrono::duration<double>(std::chrono::steady_clock::now()-t0).count()); } return n*4/best/1e9;}
int main(int argc,char**argv){ size_t bytes=512ul<<20, n=bytes/4;
 for(int mode=0;mode<3;mode++){
  float* p=(float*)mmap(nullptr,bytes+(2<<20),PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  p=(float*)(((uintptr_t)p+(2<<20)-1)&~((uintptr_t)(2<<20)-1));
  if(mode==1) madvise(p,bytes,MADV_HUGEPAGE);
  for(size_t i=0;i<n;i++) p[i]=1.f;
  int rc=0; if(mode==2){ rc=madvise(p,bytes,MADV_HUGEPAGE); int rc2=madvise(p,bytes,MADV_COLLAPSE); printf("collapse rc %d %d\n",rc,rc2);} 
  FILE*f=fopen("/proc/meminfo","r"); char line[256]; while(fgets(line,256,f)) if(!strncmp(line,"AnonHugePages",13)) printf("%s",line); fclose(f);
  printf("mode %d (0=4K,1=THP at fault,2=collapse after): %.1f GB/s\n",mode,bench(p,n));
 }}
