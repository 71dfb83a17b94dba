//! faer-eig RAW_BF16_FILE ROWS COLS DTYPE THREADS [EIGVALS_OUT]
//!
//! Reads a row-major bf16 matrix (the bytes as stored in safetensors), decodes it to
//! DTYPE (f32 or f64), forms the Gram matrix of the smaller side with faer's matmul and
//! computes its eigenvalues with faer's self-adjoint solver, on THREADS threads
//! (1 = sequential). Prints one JSON line with the timings; writes the eigenvalues as
//! little-endian f64 to EIGVALS_OUT when given (for the accuracy check).

use std::io::Write;
use std::time::Instant;

use faer::{Mat, MatRef, Par, Side};

fn run<T>(bits: &[u16], rows: usize, cols: usize, par: Par, conv: fn(f32) -> T, back: fn(T) -> f64) -> (f64, f64, f64, Vec<f64>)
where
    T: faer::traits::RealField + Copy,
{
    let t0 = Instant::now();
    let data: Vec<T> = bits.iter().map(|&b| conv(f32::from_bits((b as u32) << 16))).collect();
    let a = MatRef::from_row_major_slice(&data, rows, cols);
    let decode = t0.elapsed().as_secs_f64();
    faer::set_global_parallelism(par);
    let t1 = Instant::now();
    let g: Mat<T> = if rows >= cols { a.transpose() * a } else { a * a.transpose() };
    let gram = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let ev = g.self_adjoint_eigenvalues(Side::Lower).expect("eigenvalues did not converge");
    let eig = t2.elapsed().as_secs_f64();
    (decode, gram, eig, ev.into_iter().map(back).collect())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        eprintln!("usage: faer-eig RAW_BF16_FILE ROWS COLS f32|f64 THREADS [EIGVALS_OUT]");
        std::process::exit(2);
    }
    let bytes = std::fs::read(&args[1]).expect("cannot read the matrix file");
    let rows: usize = args[2].parse().expect("ROWS");
    let cols: usize = args[3].parse().expect("COLS");
    assert_eq!(bytes.len(), rows * cols * 2, "file size is not ROWS*COLS*2");
    let bits: Vec<u16> = bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    drop(bytes);
    let threads: usize = args[5].parse().expect("THREADS");
    let par = if threads <= 1 { Par::Seq } else { Par::rayon(threads) };
    let (decode, gram, eig, ev) = match args[4].as_str() {
        "f64" => run::<f64>(&bits, rows, cols, par, |x| x as f64, |x| x),
        "f32" => run::<f32>(&bits, rows, cols, par, |x| x, |x| x as f64),
        other => panic!("dtype must be f32 or f64, got {other}"),
    };
    if let Some(out) = args.get(6) {
        let mut f = std::fs::File::create(out).expect("cannot write eigenvalues");
        for v in &ev {
            f.write_all(&v.to_le_bytes()).unwrap();
        }
    }
    println!(
        "{{\"decode_s\": {decode:.6}, \"gram_s\": {gram:.6}, \"eig_s\": {eig:.6}, \"n\": {}}}",
        ev.len()
    );
}
