//! Datasets that work offline, their held-out splits, and how they are
//! partitioned across clients.
//!
//! - [`digits`]: the UCI handwritten digits (1,797 images of 8x8 pixels, 10
//!   classes) that smartcore embeds in its crate: the default, always
//!   there.
//! - [`fashion_mnist`]: Fashion-MNIST (60,000 + 10,000 images of 28x28, 10
//!   classes) from Debian's `dataset-fashion-mnist` package, read from its
//!   idx.gz files. Nothing is ever downloaded.
//!
//! Pixels are scaled to `[0, 1]`. [`partition`] deals the training split to
//! clients, IID or non-IID by a Dirichlet distribution over labels (the
//! usual federated benchmark skew: each client's label mix is drawn from
//! `Dir(alpha)`; small alpha gives clients few classes each).

use std::io::Read;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Gamma};

/// Where Debian's `dataset-fashion-mnist` package puts its files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Why a dataset could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file of the dataset is missing.
    #[error(
        "{path} is missing: install Debian's dataset-fashion-mnist package \
         (apt-get install dataset-fashion-mnist), or pass the directory that holds \
         the four idx.gz files"
    )]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A file cannot be read or is not what its name says.
    #[error("{path}: {problem}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A partition that cannot be made.
    #[error("cannot partition: {0}")]
    Partition(String),
}

/// Labelled images, row-major, one row of `height * width` pixels in
/// `[0, 1]` per example.
#[derive(Clone, Debug, PartialEq)]
pub struct Examples {
    /// `len() * height * width` pixels.
    pub pixels: Vec<f32>,
    /// One class per example.
    pub labels: Vec<u8>,
}

impl Examples {
    /// The number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The examples at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Examples {
        let features = if self.labels.is_empty() {
            0
        } else {
            self.pixels.len() / self.labels.len()
        };
        Examples {
            pixels: indices
                .iter()
                .flat_map(|&i| &self.pixels[i * features..(i + 1) * features])
                .copied()
                .collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }
}

/// A dataset with its training and held-out test split.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// A short name for reports.
    pub name: &'static str,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// The number of classes; labels are `0..classes`.
    pub classes: usize,
    /// What clients train on.
    pub train: Examples,
    /// Held out: only the server-side evaluation sees it.
    pub test: Examples,
}

impl Dataset {
    /// Pixels per image.
    pub fn features(&self) -> usize {
        self.height * self.width
    }

    /// The same dataset with a validation split in place of the test
    /// split: a seeded fifth of the training examples is held out and the
    /// rest stay for training; the test split is dropped, so nothing run
    /// on the result can see it.
    ///
    /// Settings are chosen on this split (`tessera demo --holdout
    /// validation`), never on the test split, so the test accuracy a
    /// README reports was not tuned for.
    pub fn with_validation_split(self, seed: u64) -> Dataset {
        let mut order: Vec<usize> = (0..self.train.len()).collect();
        // Another stream than the digits' own split, which `seed` drives.
        order.shuffle(&mut StdRng::seed_from_u64(seed ^ 0x7661_6c69_6461_7465));
        let n_validation = self.train.len() / 5;
        Dataset {
            train: self.train.select(&order[n_validation..]),
            test: self.train.select(&order[..n_validation]),
            ..self
        }
    }
}

/// The UCI digits embedded in smartcore, with a seeded 80/20 split.
pub fn digits(seed: u64) -> Dataset {
    let ds = smartcore::dataset::digits::load_dataset();
    let features = ds.num_features;
    let all = Examples {
        // Pixel intensities are 0..=16.
        pixels: ds.data.iter().map(|&p| p / 16.0).collect(),
        labels: ds.target.iter().map(|&y| y as u8).collect(),
    };
    debug_assert_eq!(all.pixels.len(), ds.num_samples * features);
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let n_test = all.len() / 5;
    Dataset {
        name: "digits",
        height: 8,
        width: 8,
        classes: 10,
        train: all.select(&order[n_test..]),
        test: all.select(&order[..n_test]),
    }
}

/// Fashion-MNIST from `dir` (the Debian package's [`FASHION_MNIST_DIR`]
/// by default): its own 60,000 / 10,000 split.
pub fn fashion_mnist(dir: &Path) -> Result<Dataset, DataError> {
    let read = |images: &str, labels: &str| -> Result<Examples, DataError> {
        let (images_path, labels_path) = (dir.join(images), dir.join(labels));
        let pixels = read_idx(&images_path, 3)?;
        let classes = read_idx(&labels_path, 1)?;
        if pixels.dims[1..] != [28, 28] || classes.dims[0] != pixels.dims[0] {
            return Err(DataError::Corrupt {
                path: images_path,
                problem: format!(
                    "{:?} images for {:?} labels, expected n x 28 x 28 and n",
                    pixels.dims, classes.dims
                ),
            });
        }
        if let Some(&bad) = classes.bytes.iter().find(|&&y| y >= 10) {
            return Err(DataError::Corrupt {
                path: labels_path,
                problem: format!("label {bad} is not a class 0..9"),
            });
        }
        Ok(Examples {
            pixels: pixels.bytes.iter().map(|&p| f32::from(p) / 255.0).collect(),
            labels: classes.bytes,
        })
    };
    Ok(Dataset {
        name: "fashion-mnist",
        height: 28,
        width: 28,
        classes: 10,
        train: read("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")?,
        test: read("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")?,
    })
}

/// An idx file's dimensions and unsigned-byte payload.
struct Idx {
    dims: Vec<usize>,
    bytes: Vec<u8>,
}

/// Reads a gzipped idx file of unsigned bytes with `rank` dimensions
/// (magic `0x00 0x00 0x08 rank`, big-endian u32 sizes, then the data).
fn read_idx(path: &Path, rank: u8) -> Result<Idx, DataError> {
    let corrupt = |problem: String| DataError::Corrupt {
        path: path.to_owned(),
        problem,
    };
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::Missing {
            path: path.to_owned(),
        },
        _ => corrupt(e.to_string()),
    })?;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .map_err(|e| corrupt(format!("not a gzip file: {e}")))?;
    let header = 4 + 4 * usize::from(rank);
    if bytes.len() < header || bytes[..4] != [0, 0, 0x08, rank] {
        return Err(corrupt(format!(
            "not an idx file of unsigned bytes with {rank} dimensions"
        )));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")) as usize)
        .collect();
    let expected: usize = dims.iter().product();
    if bytes.len() - header != expected {
        return Err(corrupt(format!(
            "{} data bytes for dimensions {dims:?}",
            bytes.len() - header
        )));
    }
    bytes.drain(..header);
    Ok(Idx { dims, bytes })
}

/// How the training split is dealt to clients.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Partitioning {
    /// Shuffled and dealt in equal shares.
    Iid,
    /// For each class, the fractions going to each client are drawn from
    /// `Dirichlet(alpha, ..., alpha)` (Hsu et al. 2019): small `alpha`
    /// concentrates each class on few clients.
    Dirichlet {
        /// The concentration, > 0.
        alpha: f64,
    },
}

/// Deals the examples with `labels` to `clients` clients; returns each
/// client's example indices. Seeded: the same seed gives the same split.
/// Every client gets at least one example (a client with none could not
/// train), so there must be at least as many examples as clients.
pub fn partition(
    labels: &[u8],
    clients: usize,
    how: Partitioning,
    seed: u64,
) -> Result<Vec<Vec<usize>>, DataError> {
    if clients == 0 || labels.len() < clients {
        return Err(DataError::Partition(format!(
            "{} examples cannot be dealt to {clients} clients",
            labels.len()
        )));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut shares: Vec<Vec<usize>> = vec![Vec::new(); clients];
    match how {
        Partitioning::Iid => {
            let mut order: Vec<usize> = (0..labels.len()).collect();
            order.shuffle(&mut rng);
            for (k, i) in order.into_iter().enumerate() {
                shares[k % clients].push(i);
            }
        }
        Partitioning::Dirichlet { alpha } => {
            let gamma = Gamma::new(alpha, 1.0).map_err(|_| {
                DataError::Partition(format!("alpha = {alpha} must be a positive number"))
            })?;
            let classes = labels
                .iter()
                .map(|&y| usize::from(y) + 1)
                .max()
                .unwrap_or(0);
            for class in 0..classes {
                let mut members: Vec<usize> = (0..labels.len())
                    .filter(|&i| usize::from(labels[i]) == class)
                    .collect();
                members.shuffle(&mut rng);
                // Normalised gammas are a Dirichlet draw.
                let weights: Vec<f64> = (0..clients).map(|_| gamma.sample(&mut rng)).collect();
                let total: f64 = weights.iter().sum();
                let mut start = 0;
                let mut cumulative = 0.0;
                for (c, w) in weights.iter().enumerate() {
                    cumulative += w / total;
                    let end = if c + 1 == clients {
                        members.len()
                    } else {
                        ((cumulative * members.len() as f64).round() as usize).min(members.len())
                    };
                    shares[c].extend_from_slice(&members[start..end.max(start)]);
                    start = end.max(start);
                }
            }
            // A client the draw left empty takes one example from the
            // largest share, so every client can train.
            for c in 0..clients {
                if shares[c].is_empty() {
                    let largest = (0..clients)
                        .max_by_key(|&k| shares[k].len())
                        .expect("clients > 0");
                    let at = rng.random_range(0..shares[largest].len());
                    let moved = shares[largest].swap_remove(at);
                    shares[c].push(moved);
                }
            }
            for share in &mut shares {
                share.shuffle(&mut rng);
            }
        }
    }
    Ok(shares)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_validation_split_is_carved_from_training_and_never_holds_a_test_example() {
        let d = digits(1);
        let v = d.clone().with_validation_split(1);
        assert_eq!(v.train.len() + v.test.len(), d.train.len());
        assert_eq!(v.test.len(), d.train.len() / 5);
        let features = d.features();
        let rows = |e: &Examples| -> Vec<Vec<u32>> {
            (0..e.len())
                .map(|i| {
                    e.pixels[i * features..(i + 1) * features]
                        .iter()
                        .map(|p| p.to_bits())
                        .collect()
                })
                .collect()
        };
        let test_rows = rows(&d.test);
        let train_rows = rows(&d.train);
        // Every validation example is a training example, and none is a
        // test example (digits has a few exact duplicates across the
        // split, so compare by multiset counts, not membership).
        for row in rows(&v.test) {
            assert!(train_rows.contains(&row));
        }
        let in_test = rows(&v.test)
            .iter()
            .filter(|r| test_rows.contains(r))
            .count();
        let dup_train_test = train_rows.iter().filter(|r| test_rows.contains(r)).count();
        assert!(in_test <= dup_train_test);
        assert_eq!(v, d.clone().with_validation_split(1));
        assert_ne!(v.test, d.with_validation_split(2).test);
    }

    #[test]
    fn digits_are_embedded_split_and_scaled() {
        let d = digits(1);
        assert_eq!((d.height, d.width, d.classes), (8, 8, 10));
        assert_eq!(d.train.len() + d.test.len(), 1797);
        assert_eq!(d.test.len(), 1797 / 5);
        assert_eq!(d.train.pixels.len(), d.train.len() * 64);
        assert!(d.train.pixels.iter().all(|&p| (0.0..=1.0).contains(&p)));
        assert!(d.train.pixels.contains(&1.0));
        // Every class is in both splits.
        for split in [&d.train, &d.test] {
            for c in 0..10u8 {
                assert!(split.labels.contains(&c));
            }
        }
        assert_eq!(digits(1), d, "seeded");
        assert_ne!(digits(2).test, d.test);
    }

    #[test]
    fn iid_and_dirichlet_partitions_cover_every_example_once() {
        let d = digits(1);
        for how in [
            Partitioning::Iid,
            Partitioning::Dirichlet { alpha: 0.1 },
            Partitioning::Dirichlet { alpha: 100.0 },
        ] {
            let shares = partition(&d.train.labels, 20, how, 7).unwrap();
            let mut all: Vec<usize> = shares.iter().flatten().copied().collect();
            all.sort_unstable();
            assert_eq!(all, (0..d.train.len()).collect::<Vec<_>>(), "{how:?}");
            assert!(shares.iter().all(|s| !s.is_empty()), "{how:?}");
            assert_eq!(partition(&d.train.labels, 20, how, 7).unwrap(), shares);
        }
        // Small alpha skews labels: the average client sees far fewer
        // classes than under IID.
        let classes_seen = |how| {
            let shares = partition(&d.train.labels, 20, how, 7).unwrap();
            shares
                .iter()
                .map(|s| {
                    let mut seen = [false; 10];
                    for &i in s {
                        seen[usize::from(d.train.labels[i])] = true;
                    }
                    seen.iter().filter(|&&b| b).count() as f64
                })
                .sum::<f64>()
                / 20.0
        };
        let iid = classes_seen(Partitioning::Iid);
        let skewed = classes_seen(Partitioning::Dirichlet { alpha: 0.1 });
        assert!(iid > 9.5, "{iid}");
        assert!(skewed < 5.0, "{skewed}");
        assert!(partition(&d.train.labels, 0, Partitioning::Iid, 1).is_err());
        assert!(partition(&[0, 1], 3, Partitioning::Iid, 1).is_err());
        assert!(
            partition(
                &d.train.labels,
                3,
                Partitioning::Dirichlet { alpha: 0.0 },
                1
            )
            .is_err()
        );
    }

    fn write_gz(path: &Path, bytes: &[u8]) {
        let mut e = flate2::write::GzEncoder::new(
            std::fs::File::create(path).unwrap(),
            flate2::Compression::fast(),
        );
        e.write_all(bytes).unwrap();
        e.finish().unwrap();
    }

    fn idx(rank: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, rank];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn fashion_mnist_reads_idx_gz_and_names_what_is_missing_or_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let err = fashion_mnist(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("train-images-idx3-ubyte.gz") && err.contains("dataset-fashion-mnist"),
            "{err}"
        );
        let image = |n: u32| idx(3, &[n, 28, 28], &vec![255u8; n as usize * 784]);
        write_gz(&dir.path().join("train-images-idx3-ubyte.gz"), &image(3));
        write_gz(
            &dir.path().join("train-labels-idx1-ubyte.gz"),
            &idx(1, &[3], &[0, 9, 4]),
        );
        write_gz(&dir.path().join("t10k-images-idx3-ubyte.gz"), &image(2));
        write_gz(
            &dir.path().join("t10k-labels-idx1-ubyte.gz"),
            &idx(1, &[2], &[1, 2]),
        );
        let d = fashion_mnist(dir.path()).unwrap();
        assert_eq!((d.train.len(), d.test.len(), d.features()), (3, 2, 784));
        assert_eq!(d.train.labels, [0, 9, 4]);
        assert!(d.train.pixels.iter().all(|&p| p == 1.0));
        // A label out of range, and a truncated payload.
        write_gz(
            &dir.path().join("t10k-labels-idx1-ubyte.gz"),
            &idx(1, &[2], &[1, 12]),
        );
        assert!(
            fashion_mnist(dir.path())
                .unwrap_err()
                .to_string()
                .contains("label 12")
        );
        write_gz(
            &dir.path().join("t10k-labels-idx1-ubyte.gz"),
            &idx(1, &[2], &[1]),
        );
        assert!(
            fashion_mnist(dir.path())
                .unwrap_err()
                .to_string()
                .contains("1 data bytes")
        );
    }
}
